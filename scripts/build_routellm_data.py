#!/usr/bin/env python
"""Build the compact RouteLLM data copy bundled in `router_tasks/data/files/routellm/`.

    python scripts/build_routellm_data.py [--source DIR] [--out DIR]

Reads a raw RouteLLM release folder (default /work/shared/benchmarks/routellm, or
$ROUTELLM_SOURCE) and writes zstd Parquet tables, the licence, SOURCE.md and
MANIFEST.json (rows, bytes and sha256 of each table). Any set of MMLU subject files in
the source works: the tables are built from whatever `mmlu_<subject>.csv` files exist.
The parsing lives in `router_tasks.data.routellm_files.read_raw_release`, so the loaders can read a
raw folder directly with exactly the same result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router_tasks.data.routellm_files import TABLES, read_raw_release, write_compact  # noqa: E402

DEFAULT_SOURCE = os.environ.get("ROUTELLM_SOURCE", "/work/shared/benchmarks/routellm")
DEFAULT_OUT = ROOT / "router_tasks" / "data" / "files" / "routellm"

SOURCE_MD = """\
# RouteLLM benchmark results (compact copy)

Origin: the RouteLLM project, https://github.com/lm-sys/RouteLLM
(`routellm/evals/`), paper "RouteLLM: Learning to Route LLMs with Preference Data",
Ong et al., arXiv:2406.18665. Licence: Apache-2.0, see `LICENSE` in this folder (copied
unchanged from the release). Built by `scripts/build_routellm_data.py`; changes below.

Models in these files: {models}.

## Kept

| file | rows | content |
|---|---:|---|
{table_rows}

- MMLU: {n_subjects} subject files, {n_mmlu} rows. `row` keeps the file order (subject
  files sorted by name); `prompt_id` = `router_tasks.core.prompts.prompt_id(prompt)`.
- GSM8K: {n_gsm} test prompts with each model's correctness, and the gold number from
  `test.jsonl` (matched on the normalised question text; {n_gold_missing} unmatched);
  `gsm8k_train` holds the {n_train} `train.jsonl` questions with their gold number.
- MT-Bench: the 80 questions (turns, category, reference answers where given) and the
  GPT-4 single-answer grade (1-10) per question, model and turn. A missing rating (written
  as -1 in the release) is stored as null.
- Commercial routers: GPT-4 grades of the MT-Bench answers produced through Martian and
  Unify, and which model each router reported it used (`answered_by`).
- The three decontamination lists (`eval_prompt` is the benchmark prompt to drop,
  `train_prompt` the training prompt it overlaps).

## Dropped (size)

- GSM8K: each model's full response text (`<model>_response` columns) and the worked
  solutions of `test.jsonl`/`train.jsonl` (only the final `#### <number>` is kept).
- MT-Bench and commercial routers: the judge's explanation (`judgment`), the judged
  conversation (`user_prompt`, which holds the full answers), timestamps, the judge name,
  and the commercial routers' answer texts.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=DEFAULT_SOURCE)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    src, out = Path(args.source), Path(args.out)

    tables = read_raw_release(src)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.parquet"):  # a table this version no longer writes
        if stale.stem not in TABLES:
            stale.unlink()
    info = write_compact(tables, out)
    shutil.copyfile(src / "LICENSE", out / "LICENSE")

    models = sorted(set(tables["mmlu_results"]["model"]) | set(tables["mt_bench_judgements"]["model"]))
    table_rows = "\n".join(f"| `{f}` | {m['rows']} | {TABLES[f[:-8]]} |" for f, m in info.items())
    (out / "SOURCE.md").write_text(
        SOURCE_MD.format(
            models=", ".join(f"`{m}`" for m in models),
            table_rows=table_rows,
            n_subjects=tables["mmlu_prompts"]["subject"].nunique(),
            n_mmlu=len(tables["mmlu_prompts"]),
            n_gsm=len(tables["gsm8k_prompts"]),
            n_gold_missing=int(tables["gsm8k_prompts"]["gold_answer"].isna().sum()),
            n_train=len(tables["gsm8k_train"]),
        )
    )
    (out / "MANIFEST.json").write_text(
        json.dumps(
            {"origin": "lm-sys/RouteLLM routellm/evals (Apache-2.0)", "built_from": src.name, "files": info},
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    total = sum(m["bytes"] for m in info.values())
    print(f"wrote {len(info)} tables, {total / 1e6:.2f} MB, to {out}")
    for f, m in info.items():
        print(f"  {f:32s} {m['rows']:>7d} rows {m['bytes'] / 1e3:>9.1f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
