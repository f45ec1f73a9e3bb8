"""RouteLLM's result files: the raw release and the compact copy bundled here.

`read_raw_release` parses a raw RouteLLM release folder (`mmlu/responses/mmlu_<subject>.csv`,
GSM8K and MT-Bench files, the commercial routers' judgements, the decontamination lists)
into the tables named in `TABLES`; `write_compact` writes those as the compact Parquet copy
under `router_tasks/data/files/routellm/` (`scripts/build_routellm_data.py`); `load_tables`
reads either layout from `data_dir` (argument, `TELA_ROUTELLM_DATA`, or the bundled copy).
What the tables mean as benchmarks is `router_tasks.data.routellm`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from router_tasks.core.prompts import normalize_prompt, prompt_id

BUNDLED_DIR = Path(__file__).parent / "files" / "routellm"
DATA_ENV = "TELA_ROUTELLM_DATA"

#: compact file name -> what it holds (the build script writes exactly these)
TABLES = {
    "mmlu_prompts": "row, subject, prompt_id, prompt (one row per CSV row, file order)",
    "mmlu_results": "row, model, correct (long format: one row per prompt row and model)",
    "gsm8k_prompts": "row, prompt_id, prompt, gold_answer (number from test.jsonl)",
    "gsm8k_results": "row, model, correct",
    "gsm8k_train": "prompt_id, question, gold_answer (train.jsonl, solutions dropped)",
    "mt_bench_questions": "question_id, prompt_id, category, turns, reference",
    "mt_bench_judgements": "question_id, model, turn, score (GPT-4 1-10; null = no rating)",
    "commercial_judgements": "router, question_id, turn, score",
    "commercial_routes": "router, question_id, answered_by (model id the router reported)",
    "contaminated": "benchmark, eval_prompt, train_prompt",
}


_GOLD_RE = re.compile(r"####\s*(.+?)\s*$", re.S)


def gold_number(solution: str) -> str:
    """The final answer of a GSM8K solution ('... #### 1,234' -> '1234')."""
    m = _GOLD_RE.search(solution or "")
    if not m:
        raise ValueError(f"GSM8K solution has no '#### <number>' line: {solution[-80:]!r}")
    return m.group(1).replace(",", "").strip()


def _bool_column(values: pd.Series, where: str) -> pd.Series:
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    text = values.astype(str).str.strip().str.lower()
    bad = ~text.isin(list(mapping))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{where}: row {i} has {values.iloc[i]!r}, expected True/False")
    return text.map(mapping).astype(bool)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _score(value) -> float:
    """A judge score; RouteLLM's files write a missing rating as -1."""
    if value is None:
        return np.nan
    value = float(value)
    return np.nan if value < 0 else value


def _correctness(df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a responses CSV into (prompt rows, long results): model columns are the
    boolean columns; `<model>_response` text columns are dropped on purpose (size)."""
    models = [c for c in df.columns if c not in ("prompt", "row") and not c.endswith("_response")]
    if "prompt" not in df.columns or not models:
        raise ValueError(f"{where}: expected a 'prompt' column and one column per model, got {list(df.columns)}")
    long = []
    for m in models:
        long.append(
            pd.DataFrame({"row": df["row"], "model": m, "correct": _bool_column(df[m], f"{where} column {m!r}")})
        )
    return df[["row", "prompt"]], pd.concat(long, ignore_index=True)


def read_raw_release(source: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Parse a raw RouteLLM release folder into the compact tables (see `TABLES`)."""
    src = Path(source)
    tables: dict[str, pd.DataFrame] = {}

    # MMLU: whatever subject files are present; rows keep file order, subject files sorted
    files = sorted((src / "mmlu" / "responses").glob("mmlu_*.csv"))
    if not files:
        raise FileNotFoundError(f"{src}/mmlu/responses/ has no mmlu_<subject>.csv files")
    prompts, results, offset = [], [], 0
    for f in files:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        df.insert(0, "row", np.arange(offset, offset + len(df), dtype=np.int64))
        offset += len(df)
        p, r = _correctness(df, str(f))
        p = p.assign(subject=f.stem.removeprefix("mmlu_"))
        prompts.append(p)
        results.append(r)
    mmlu = pd.concat(prompts, ignore_index=True)
    mmlu["prompt_id"] = mmlu["prompt"].map(prompt_id)
    tables["mmlu_prompts"] = mmlu[["row", "subject", "prompt_id", "prompt"]]
    tables["mmlu_results"] = pd.concat(results, ignore_index=True)

    # GSM8K: correctness + the gold number of the matching test question
    g = pd.read_csv(src / "gsm8k" / "gsm8k_responses.csv", dtype=str, keep_default_na=False)
    g.insert(0, "row", np.arange(len(g), dtype=np.int64))
    gp, gr = _correctness(g, "gsm8k/gsm8k_responses.csv")
    gold = {
        normalize_prompt(r["question"]): gold_number(r["answer"]) for r in _read_jsonl(src / "gsm8k" / "test.jsonl")
    }
    gp = gp.assign(
        prompt_id=gp["prompt"].map(prompt_id), gold_answer=gp["prompt"].map(lambda t: gold.get(normalize_prompt(t)))
    )
    tables["gsm8k_prompts"] = gp[["row", "prompt_id", "prompt", "gold_answer"]]
    tables["gsm8k_results"] = gr
    train = _read_jsonl(src / "gsm8k" / "train.jsonl")
    tables["gsm8k_train"] = pd.DataFrame(
        {
            "prompt_id": [prompt_id(r["question"]) for r in train],
            "question": [r["question"] for r in train],
            "gold_answer": [gold_number(r["answer"]) for r in train],
        }
    )

    # MT-Bench: questions, and only the numbers of the judgements (the texts are large)
    qs = _read_jsonl(src / "mt_bench" / "question.jsonl")
    tables["mt_bench_questions"] = pd.DataFrame(
        {
            "question_id": [int(q["question_id"]) for q in qs],
            "prompt_id": [prompt_id(q["turns"][0]) for q in qs],
            "category": [q.get("category") for q in qs],
            "turns": [list(q["turns"]) for q in qs],
            "reference": [list(q["reference"]) if q.get("reference") else None for q in qs],
        }
    )
    js = _read_jsonl(src / "mt_bench" / "judgements.jsonl")
    tables["mt_bench_judgements"] = pd.DataFrame(
        {
            "question_id": [int(j["question_id"]) for j in js],
            "model": [j["model"] for j in js],
            "turn": [int(j["turn"]) for j in js],
            "score": [_score(j.get("score")) for j in js],
        }
    )

    # commercial routers (optional in a release)
    cdir = src / "commercial_routers"
    if (cdir / "gpt-4_single.jsonl").exists():
        cj = _read_jsonl(cdir / "gpt-4_single.jsonl")
        tables["commercial_judgements"] = pd.DataFrame(
            {
                "router": [j["model"] for j in cj],
                "question_id": [int(j["question_id"]) for j in cj],
                "turn": [int(j["turn"]) for j in cj],
                "score": [_score(j.get("score")) for j in cj],
            }
        )
        routes = []
        for f in sorted(cdir.glob("*.jsonl")):
            if f.name == "gpt-4_single.jsonl":
                continue
            for r in _read_jsonl(f):
                routes.append(
                    {"router": f.stem, "question_id": int(r["question_id"]), "answered_by": r.get("model_id")}
                )
        tables["commercial_routes"] = pd.DataFrame(routes, columns=["router", "question_id", "answered_by"])
    else:
        tables["commercial_judgements"] = pd.DataFrame(columns=["router", "question_id", "turn", "score"])
        tables["commercial_routes"] = pd.DataFrame(columns=["router", "question_id", "answered_by"])

    cont = []
    for bench, folder in (("mmlu", "mmlu"), ("gsm8k", "gsm8k"), ("mt-bench", "mt_bench")):
        path = src / folder / "contaminated_prompts.jsonl"
        if path.exists():
            for r in _read_jsonl(path):
                cont.append(
                    {"benchmark": bench, "eval_prompt": r["eval_prompt"], "train_prompt": r.get("train_prompt")}
                )
    tables["contaminated"] = pd.DataFrame(cont, columns=["benchmark", "eval_prompt", "train_prompt"])
    return tables


def is_raw_release(folder: Path) -> bool:
    return (folder / "mmlu" / "responses").is_dir()


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder to read: argument, else $TELA_ROUTELLM_DATA, else the bundled copy."""
    return Path(path or os.environ.get(DATA_ENV) or BUNDLED_DIR).resolve()


@lru_cache(maxsize=4)
def read_tables(folder: str) -> dict[str, pd.DataFrame]:
    """The tables of `folder` (compact or raw), cached: shared, so never modify them."""
    path = Path(folder)
    if is_raw_release(path):
        return read_raw_release(path)
    missing = [n for n in TABLES if not (path / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(
            f"RouteLLM data folder {path} lacks {', '.join(f'{n}.parquet' for n in missing)}; "
            f"rebuild it with scripts/build_routellm_data.py or point {DATA_ENV} at a raw release"
        )
    return {n: pd.read_parquet(path / f"{n}.parquet") for n in TABLES}


def load_tables(path: str | os.PathLike | None = None) -> dict[str, pd.DataFrame]:
    """All tables, cached per folder; callers get copies so they cannot corrupt the cache."""
    return {k: v.copy() for k, v in read_tables(str(data_dir(path))).items()}


def write_compact(tables: dict[str, pd.DataFrame], out: str | os.PathLike) -> dict[str, dict]:
    """Write the compact Parquet copy (zstd); returns {file: {rows, bytes, sha256}}."""
    # pyarrow directly (not pandas' to_parquet) for the compression level: only the build script writes
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for name in TABLES:
        df = tables[name].reset_index(drop=True)
        buf = io.BytesIO()
        pq.write_table(
            pa.Table.from_pandas(df, preserve_index=False),
            buf,
            compression="zstd",
            compression_level=19,
            use_dictionary=True,
        )
        data = buf.getvalue()
        (out / f"{name}.parquet").write_bytes(data)
        info[f"{name}.parquet"] = {"rows": int(len(df)), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return info
