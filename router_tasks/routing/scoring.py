"""Score prompts with a trained router: the function behind `tela score`.

    tela score --router champion --input PROMPTS --output OUT.parquet

PROMPTS is JSON Lines, CSV or Parquet with a `prompt` column. OUT has one row per input
row, in input order: `prompt`, `prompt_id`, `strong_win_rate` in [0, 1] (higher = more
need for the strong model; RouteLLM's convention, compare it with a threshold), and
`quality::<model>`, the predicted quality of every model the router knows, and, when
prices are known (`--prices FILE` in the shape of the shared prices.json, or stored with
the router at training), `cost::<model>`: the predicted dollars of sending the prompt to
that model (billed input tokens and the router's predicted reply length).

    tela route --router KEY --input PROMPTS --prices FILE --pool A,B,C \
        (--target-quality Q | --budget-per-1k D | --share MODEL=S) --output OUT

`route_prompts` writes the chosen `model` per prompt (the frontier policy,
`routing.choice.route_frontier`), with its predicted quality and cost.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from router_tasks.core.prompts import prompt_id
from router_tasks.core.store import ArtifactStore
from router_tasks.data.quality import DataQualityError, format_failures, run_suite
from router_tasks.data.quality_suites import prediction_columns, predictions_suite
from router_tasks.data.table_files import check_output_path, read_prompts, write_table_file
from router_tasks.data.zeroeval import read_prices
from router_tasks.routers import load_router
from router_tasks.routing.choice import route_frontier

log = logging.getLogger(__name__)

QUALITY_PREFIX = "quality::"
COST_PREFIX = "cost::"


def resolve_prices(router, prices=None) -> dict | None:
    """Prices for `router`'s models: `prices` (a path, JSON text or dict in prices.json's
    shape) or those stored with the router; None when neither exists."""
    if prices is None:
        return dict(router.prices) if getattr(router, "prices", None) else None
    return read_prices(prices)


def score_frame(router, prompts: list[str], prices: dict | None = None) -> pd.DataFrame:
    """The output table for `prompts` from a loaded router (cost:: columns with prices)."""
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
    if prices:
        cost = router.predict_cost(prompts, prices)
        for model in router.models:
            out[f"{COST_PREFIX}{model}"] = cost[model].to_numpy(float)
    return out


def check_predictions(out: pd.DataFrame, expected_rows: int) -> None:
    """The predictions suite: probabilities in [0, 1], no NaN, one row per input."""
    res = run_suite(out, predictions_suite(prediction_columns(out), expected_rows=expected_rows), stage="score")
    if res.failures:
        raise DataQualityError(
            format_failures("router predictions", res.failures), res.failures, stage="score", kind="predictions"
        )


def score_prompts(
    router: str | dict, input_path: str, output_path: str, artifact_root: str | None = None, prices=None
) -> pd.DataFrame:
    """Score every prompt of `input_path` with `router` ("champion", a ref, key or URI).

    `prices` (path, JSON text or dict) adds cost:: columns; so do prices stored with the router."""
    check_output_path(output_path)
    prompts = read_prompts(input_path)
    loaded = load_router(router, ArtifactStore(artifact_root))
    started = time.time()
    out = score_frame(loaded, prompts, resolve_prices(loaded, prices))
    check_predictions(out, expected_rows=len(prompts))  # a broken router never writes output
    write_table_file(out, output_path)
    log.info(
        "scored %d prompts with %s router %s in %.1f s -> %s",
        len(out),
        loaded.meta["kind"],
        loaded.artifact_key,
        time.time() - started,
        output_path,
    )
    return out


def route_prompts(
    router: str | dict,
    input_path: str,
    output_path: str,
    *,
    prices=None,
    pool: list[str] | None = None,
    target_quality: float | None = None,
    budget_per_1k: float | None = None,
    model_share: tuple[str, float] | None = None,
    artifact_root: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Choose a model per prompt among `pool` (default: every model the router knows)
    with the frontier policy; writes prompt, prompt_id, model, predicted_quality,
    predicted_cost. Returns (table, the policy's summary: lambda, means, shares)."""
    check_output_path(output_path)
    prompts = read_prompts(input_path)
    loaded = load_router(router, ArtifactStore(artifact_root))
    price_map = resolve_prices(loaded, prices)
    if not price_map:
        raise ValueError("routing needs prices: pass --prices FILE, or train the router with --prices")
    pool = list(pool) if pool else list(loaded.models)
    unknown = [m for m in pool if m not in loaded.models]
    if unknown:
        raise ValueError(f"pool model(s) {unknown} unknown to router {loaded.artifact_key}; it knows {loaded.models}")
    quality = loaded.predict_quality(prompts)
    cost = loaded.predict_cost(prompts, price_map, models=pool)
    decision = route_frontier(
        quality[pool], cost[pool], target_quality=target_quality, budget_per_1k=budget_per_1k, model_share=model_share
    )
    rows = range(len(prompts))
    out = pd.DataFrame(
        {
            "prompt": prompts,
            "prompt_id": [prompt_id(p) for p in prompts],
            "model": decision.choice.to_numpy(),
            "predicted_quality": [float(quality.loc[i, m]) for i, m in zip(rows, decision.choice, strict=False)],
            "predicted_cost": [float(cost.loc[i, m]) for i, m in zip(rows, decision.choice, strict=False)],
        }
    )
    write_table_file(out, output_path)
    summary = {**decision.to_dict(), "pool": pool, "mean_cost_per_1k": decision.mean_cost * 1000, "prompts": len(out)}
    log.info("routed %d prompts with %s: %s", len(out), loaded.artifact_key, summary)
    return out, summary
