"""Threshold calibration: which `strong_win_rate` threshold sends a target share of the
user's own traffic to the strong model.

A router's scores are not probabilities of anything the user budgets for; what the user
knows is "I can afford the strong model on ~30% of requests". Given a sample of their
prompts, the threshold is read off the scores' distribution (RouteLLM's `calibrate_threshold`
does the same with `np.percentile`). Routing rule, as everywhere here: a prompt goes to the
strong model when `strong_win_rate >= threshold`.

Ties matter: a kNN router gives many prompts the same score, so not every share is
reachable. `routing.thresholds.threshold_for_share` returns the reachable share nearest the
target and says what it achieves; the RouteLLM percentile value is kept beside it for
comparison with published thresholds. The maths (thresholds, the many-model
`target_for_budget`) lives in `router_tasks.routing.thresholds`; this module is the stage.

Stored with the router as a `calibrate` artifact whose input is the router's train
artifact (stages/calibrate/<key>/):
    calibration.json   threshold, target and achieved share, sample size, router key
    data.parquet       prompt_id, strong_win_rate, to_strong for every sampled prompt
Duplicate prompts in the sample are kept: they are traffic, and traffic is what is budgeted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import ArtifactRef, resolve_ref, run_stage, stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.data.table_files import read_prompts
from router_tasks.routers import load_router, resolve_router_key
from router_tasks.routing.thresholds import NEUTRAL_THRESHOLD, checked_scores, target_for_budget, threshold_for_share

log = logging.getLogger(__name__)

STAGE = "calibrate"
STAGE_VERSION = "1"
CALIBRATION_FILE = "calibration.json"


def _sample(prompts, store: ArtifactStore) -> tuple[list[str], dict | None, str]:
    """(prompts, input ref or None, description) from a list, a file path or a table ref."""
    if isinstance(prompts, (ArtifactRef, dict)) or (isinstance(prompts, str) and prompts.strip().startswith("{")):
        ref = resolve_ref(prompts, store)
        table = store.read_parquet(f"{ref['key']}/data.parquet")
        if "prompt" not in table.columns:
            raise ValueError(f"{store.uri(ref['key'])}: no 'prompt' column (columns: {list(table.columns)})")
        return table["prompt"].astype(str).tolist(), ref, ref["key"]
    if isinstance(prompts, str):
        return read_prompts(prompts), None, prompts
    texts = list(prompts)
    for i, p in enumerate(texts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"sample prompt #{i} is empty or not text: {p!r:.80}")
    return texts, None, f"{len(texts)} prompts"


def _calibrate(router, prompts, config: dict, decide, artifact_root: str | None) -> dict:
    """Shared by both calibrations: resolve the router and the sample, run `decide(r, texts,
    ctx)` (which returns the calibration dict and the per-prompt table) as a stage."""
    rstore, rkey = resolve_router_key(router, ArtifactStore(artifact_root))
    store = rstore  # the calibration is stored beside the router it belongs to
    router_ref = resolve_ref(rkey, store)
    texts, prompts_ref, source = _sample(prompts, store)
    if not texts:
        raise ValueError(f"no prompts to calibrate on in {source}")
    inputs = {"router": router_ref}
    config = {**config, "n_prompts": len(texts)}
    if prompts_ref is not None:
        inputs["prompts"] = prompts_ref
    else:  # the sample itself decides the threshold: key on its content
        config["prompts_sha"] = stable_hash(texts, length=32)

    def compute(ctx) -> None:
        r = load_router(ctx.inputs["router"].to_dict(), ctx.store)
        result, table = decide(r, texts)
        result = {
            "router": ctx.inputs["router"].to_dict(),
            "kind": r.meta.get("kind"),
            "n_prompts": len(texts),
            "sample": source,
            **result,
        }
        ctx.write_file(CALIBRATION_FILE, json.dumps(result, indent=2, sort_keys=True).encode())
        ctx.write_table(table.assign(prompt_id=[prompt_id(p) for p in texts])[["prompt_id", *table.columns]])
        ctx.stats.update({k: v for k, v in result.items() if isinstance(v, (int, float))})

    return run_stage(STAGE, STAGE_VERSION, compute, inputs=inputs, config=config, store=store)


def calibrate_router(
    router: dict | str,
    prompts: Sequence[str] | str | dict,
    target_strong_share: float | None,
    *,
    target_from: str | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Calibrate `router` (train ref, key/URI or "champion") on a sample; returns the ref.

    `prompts`: a list of prompt texts, a jsonl/csv/parquet file with a `prompt` column, or
    the ref of an artifact whose data.parquet has one (e.g. the ingest stage's output).
    `target_strong_share` None keeps the router's neutral rule (threshold
    `NEUTRAL_THRESHOLD`: strong when it is predicted better) and records the share that
    rule sends on the sample as the target. `target_from` says where the target came from
    (kept in calibration.json). Read the result with `read_calibration(ref)`.
    """
    if target_strong_share is not None and not 0.0 <= float(target_strong_share) <= 1.0:
        raise ValueError(f"target strong share must be in [0, 1], got {target_strong_share}")

    def decide(r, texts):
        scores = checked_scores(r.strong_win_rate(texts))
        why = target_from or "given"
        if target_strong_share is None:
            threshold = NEUTRAL_THRESHOLD
            target = achieved = float((scores >= threshold).mean())
            why = (
                f"the router's neutral threshold: strong where predicted strictly better "
                f"({target_from or 'no share chosen'})"
            )
        else:
            target = float(target_strong_share)
            threshold, achieved = threshold_for_share(scores, target)
        log.info(
            "calibrated %s: threshold %.6f sends %.1f%% of %d prompts to %s (target %.1f%%: %s)",
            r.artifact_key,
            threshold,
            100 * achieved,
            len(texts),
            r.strong_model,
            100 * target,
            why,
        )
        return {
            "strong_model": r.strong_model,
            "weak_model": r.weak_model,
            "rule": "strong model when strong_win_rate >= threshold",
            "threshold": threshold,
            "target_strong_share": target,
            "target_from": why,
            "achieved_strong_share": achieved,
            "routellm_threshold": float(np.percentile(scores, 100 * (1 - target))),
            "n_distinct_scores": int(len(np.unique(scores))),
        }, pd.DataFrame({"strong_win_rate": scores, "to_strong": scores >= threshold})

    config = {"target_strong_share": None if target_strong_share is None else float(target_strong_share)}
    return _calibrate(router, prompts, config, decide, artifact_root)


def calibrate_budget(
    router: dict | str,
    prompts: Sequence[str] | str | dict,
    prices: dict,
    budget_per_prompt: float,
    *,
    tokens_per_prompt: float | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Many models: the quality target that spends at most `budget_per_prompt` on average
    (prices per call, or per 1M tokens with `tokens_per_prompt`), stored with the router."""
    missing = [m for m in prices if not isinstance(prices[m], (int, float))]
    if missing:
        raise ValueError(f"prices must be numbers; bad entries for {missing}")

    def decide(r, texts):
        unknown = [m for m in r.models if m not in prices]
        if unknown:
            raise ValueError(f"no price for model(s) {unknown}; prices given for {sorted(prices)}")
        quality = r.predict_quality(texts)[r.models]
        target, choice, cost = target_for_budget(
            quality, prices, budget_per_prompt, tokens_per_prompt=tokens_per_prompt
        )
        share = choice.value_counts(normalize=True).reindex(r.models, fill_value=0.0)
        log.info(
            "budget calibration %s: target quality %.4f costs %.6f per prompt (budget %.6f)",
            r.artifact_key,
            target,
            cost,
            budget_per_prompt,
        )
        return {
            "rule": "cheapest model whose predicted quality >= target",
            "target_quality": target,
            "budget_per_prompt": float(budget_per_prompt),
            "achieved_cost_per_prompt": cost,
            "prices": dict(prices),
            "tokens_per_prompt": tokens_per_prompt,
            "share_by_model": {m: float(v) for m, v in share.items()},
            "mean_predicted_quality": float(np.mean([quality.loc[i, m] for i, m in choice.items()])),
        }, pd.DataFrame({"model": choice.to_numpy()})

    config = {
        "budget_per_prompt": float(budget_per_prompt),
        "prices": dict(sorted(prices.items())),
        "tokens_per_prompt": tokens_per_prompt,
    }
    return _calibrate(router, prompts, config, decide, artifact_root)


def read_calibration(ref: dict | str, artifact_root: str | None = None) -> dict:
    """The calibration.json of a calibrate artifact (ref dict, key or URI)."""
    store = ArtifactStore(artifact_root)
    r = resolve_ref(ref, store)
    if r["stage"] != STAGE:
        raise ValueError(f"expected a {STAGE} artifact, got stage {r['stage']!r} ({r['key']})")
    return store.read_json(f"{r['key']}/{CALIBRATION_FILE}")
