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

import pandas as pd

from router_tasks.core.prompts import prompt_id
from router_tasks.routers import load_router
from router_tasks.core.store import ArtifactStore
from router_tasks.data.table_files import check_output_path, read_prompts, write_table_file

log = logging.getLogger(__name__)

QUALITY_PREFIX = "quality::"


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
    from router_tasks.data.quality import DataQualityError, format_failures, prediction_columns, predictions_suite, run_suite

    res = run_suite(out, predictions_suite(prediction_columns(out), expected_rows=expected_rows), stage="score")
    if res.failures:
        raise DataQualityError(format_failures("router predictions", res.failures), res.failures, stage="score",
                               kind="predictions")


def score_prompts(router: str | dict, input_path: str, output_path: str, artifact_root: str | None = None) -> pd.DataFrame:
    """Score every prompt of `input_path` with `router` ("champion", a ref, key or URI)."""
    check_output_path(output_path)
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
