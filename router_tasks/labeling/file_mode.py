"""Generate and judge on plain files, without artifacts or Airflow: `tela generate --input`
and `tela judge --input`, for a quick check of one endpoint or one judge.

    tela generate --input PROMPTS --model NAME --base-url URL [--api-key-env VAR]
                  [--concurrency N] --output OUT.parquet
    tela judge --input ANSWERS --judge-model NAME --base-url URL [--api-key-env VAR]
               [--concurrency N] --output OUT.parquet

Input files are JSON Lines, CSV or Parquet. The output keeps every input column, in
input order, and adds the stage's columns. The calls go through the same client, retries
and request cache as the pipeline (the cache lives under the artifact root), so running
a check twice pays once, and a pipeline run afterwards reuses what the check paid for.
"""

from __future__ import annotations

import logging

import pandas as pd

from router_tasks.core.endpoints import Endpoint
from router_tasks.core.store import ArtifactStore
from router_tasks.data.table_files import read_table_file, write_table_file
from router_tasks.labeling.generate import ANSWER_COLUMNS, answer_prompts
from router_tasks.labeling.judge import JUDGEMENT_COLUMNS, grade_answers, judge_endpoint

log = logging.getLogger(__name__)


def _endpoint_dict(
    model: str,
    base_url: str | None,
    api_key_env: str | None,
    concurrency: int | None,
    max_tokens: int | None,
    temperature: float | None,
    name: str | None = None,
) -> dict:
    d = {
        "name": name or model,
        "model": model,
        "base_url": base_url,
        "api_key_env": api_key_env,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    return {k: v for k, v in d.items() if v is not None}


def _require(df: pd.DataFrame, path: str, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: no {missing} column(s) (columns: {list(df.columns)})")


def _row_ids(n: int) -> list[str]:
    # Rows are matched by position: two identical prompts are still two rows.
    return [f"row-{i}" for i in range(n)]


def generate_file(
    input_path: str,
    output_path: str,
    *,
    model: str,
    base_url: str | None = None,
    api_key_env: str | None = None,
    concurrency: int | None = None,
    max_tokens: int | None = 128,
    temperature: float | None = 0.0,
    name: str | None = None,
    artifact_root: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Answer each row's `prompt` with one endpoint; write input + answer columns."""
    ep = Endpoint.from_dict(_endpoint_dict(model, base_url, api_key_env, concurrency, max_tokens, temperature, name))
    ep.api_key()
    df = read_table_file(input_path)
    _require(df, input_path, ("prompt",))
    work = pd.DataFrame({"prompt_id": _row_ids(len(df)), "prompt": df["prompt"].tolist()})
    answers, stats = answer_prompts(work, ep, store=ArtifactStore(artifact_root), max_failure_rate=1.0)
    added = answers.drop(columns=["prompt_id"]).reset_index(drop=True)
    out = pd.concat(
        [df.drop(columns=[c for c in added.columns if c in df.columns]).reset_index(drop=True), added], axis=1
    )
    write_table_file(out, output_path)
    return out, stats


def judge_file(
    input_path: str,
    output_path: str,
    *,
    judge_model: str,
    base_url: str | None = None,
    api_key_env: str | None = None,
    concurrency: int | None = None,
    max_tokens: int | None = 256,
    name: str | None = None,
    artifact_root: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Grade each row's `answer` to its `prompt` against `reference_answer` (LLM judge) or
    `gold_answer` + `gold_type` (exact match); write input + judgement columns."""
    endpoint = judge_endpoint(_endpoint_dict(judge_model, base_url, api_key_env, concurrency, max_tokens, 0.0, name))
    df = read_table_file(input_path, what="answers")
    _require(df, input_path, ("prompt", "answer"))
    if not {"reference_answer", "gold_answer"} & set(df.columns):
        raise ValueError(
            f"{input_path}: needs a 'reference_answer' column (LLM judge) or 'gold_answer' and "
            f"'gold_type' columns (exact match); columns: {list(df.columns)}"
        )
    ids = _row_ids(len(df))
    pdf = pd.DataFrame({"prompt_id": ids, "prompt": df["prompt"].tolist()})
    for col in ("reference_answer", "gold_answer", "gold_type"):
        pdf[col] = df[col].tolist() if col in df.columns else None
    model = df["model"].astype(str).tolist() if "model" in df.columns else ["model"] * len(df)
    error = df["error"].tolist() if "error" in df.columns else [None] * len(df)
    adf = pd.DataFrame({"prompt_id": ids, "model": model, "answer": df["answer"].tolist(), "error": error})
    judged, stats = grade_answers(pdf, adf, endpoint, store=ArtifactStore(artifact_root), max_failure_rate=1.0)
    added = judged.drop(columns=["prompt_id", "model"]).reset_index(drop=True)
    out = pd.concat(
        [df.drop(columns=[c for c in added.columns if c in df.columns]).reset_index(drop=True), added], axis=1
    )
    write_table_file(out, output_path)
    return out, stats


__all__ = ["generate_file", "judge_file", "ANSWER_COLUMNS", "JUDGEMENT_COLUMNS"]
