"""Score prompts with a trained router: the function behind `tela score`.

    tela score --router champion --input PROMPTS --output OUT.parquet

PROMPTS is JSON Lines, CSV or Parquet with a `prompt` column. OUT has one row per input
row, in input order: `prompt`, `prompt_id`, `strong_win_rate` in [0, 1] (higher = more
need for the strong model; RouteLLM's convention, compare it with a threshold), and
`quality::<model>`, the predicted quality of every model the router knows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from router_tasks.prompts import prompt_id
from router_tasks.routers import load_router
from router_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

QUALITY_PREFIX = "quality::"
def _read_json(path: str) -> pd.DataFrame:
    try:
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError:  # a JSON array of records rather than JSON Lines
        return pd.read_json(path, dtype=False)


_READERS = {
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: _read_json(p),
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
    ".parquet": pd.read_parquet,
}


def _suffix(path: str) -> str:
    return Path(str(path).split("?")[0]).suffix.lower()


def read_table_file(path: str, what: str = "prompts") -> pd.DataFrame:
    """A jsonl/csv/parquet file as a table; errors name the file."""
    suffix = _suffix(path)
    if suffix not in _READERS:
        raise ValueError(f"{path}: unsupported {what} file type {suffix!r}; use one of {sorted(_READERS)}")
    if "://" not in str(path) and not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return _READERS[suffix](path)
    except ValueError as err:
        raise ValueError(f"{path}: cannot read as {suffix[1:]}: {err}") from err


def read_prompts(path: str) -> list[str]:
    """The `prompt` column of a jsonl/csv/parquet file; errors name the file and row."""
    df = read_table_file(path)
    if "prompt" not in df.columns:
        raise ValueError(f"{path}: no 'prompt' column (columns: {list(df.columns)})")
    prompts = df["prompt"].tolist()
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{path}: row {i} has an empty or non-text prompt: {p!r:.80}")
    return prompts


def write_table_file(df: pd.DataFrame, path: str) -> None:
    suffix = _suffix(path)
    if "://" not in str(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix in (".jsonl", ".json"):
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"{path}: unsupported output type {suffix!r}; use .parquet, .csv or .jsonl")


def score_frame(router, prompts: list[str]) -> pd.DataFrame:
    """The output table for `prompts` from a loaded router."""
    quality = router.predict_quality(prompts)
    out = pd.DataFrame(
        {
            "prompt": prompts,
            "prompt_id": [prompt_id(p) for p in prompts],
            "strong_win_rate": router.strong_win_rate(prompts, quality=quality),
        }
    )
    for model in router.models:
        out[f"{QUALITY_PREFIX}{model}"] = quality[model].to_numpy(float)
    return out


def check_predictions(out: pd.DataFrame, expected_rows: int) -> None:
    """The predictions suite: probabilities in [0, 1], no NaN, one row per input."""
    from router_tasks.quality import DataQualityError, format_failures, prediction_columns, predictions_suite, run_suite

    res = run_suite(out, predictions_suite(prediction_columns(out), expected_rows=expected_rows), stage="score")
    if res.failures:
        raise DataQualityError(format_failures("router predictions", res.failures), res.failures, stage="score",
                               kind="predictions")


def score_prompts(router: str | dict, input_path: str, output_path: str, artifact_root: str | None = None) -> pd.DataFrame:
    """Score every prompt of `input_path` with `router` ("champion", a ref, key or URI)."""
    if _suffix(output_path) not in (".parquet", ".csv", ".jsonl", ".json"):
        raise ValueError(f"{output_path}: unsupported output type; use .parquet, .csv or .jsonl")
    prompts = read_prompts(input_path)
    loaded = load_router(router, ArtifactStore(artifact_root))
    started = time.time()
    out = score_frame(loaded, prompts)
    check_predictions(out, expected_rows=len(prompts))  # a broken router never writes output
    write_table_file(out, output_path)
    log.info(
        "scored %d prompts with %s router %s in %.1f s -> %s",
        len(out), loaded.meta["kind"], loaded.artifact_key, time.time() - started, output_path,
    )
    return out
