"""Publish: move the `champion` pointer to a new router only when it beats the current one.

The router artifact itself is already immutable in the store (the train stage wrote it);
publishing only rewrites one small object, `champion/CHAMPION.json`, in a single PUT, so
a crash leaves either the old or the new champion, never a mix. Every decision is kept
under `champion/decisions/`, and each champion ever promoted under `champion/history/`,
so a rollback is `rollback_champion()` away.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pandas as pd

from router_tasks.core.stage import ArtifactRef, load_table, stable_hash
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

CHAMPION_KEY = "champion/CHAMPION.json"


def read_champion(store: ArtifactStore) -> dict | None:
    return store.read_json(CHAMPION_KEY) if store.exists(CHAMPION_KEY) else None


def headline_score(evaluation: pd.DataFrame, metric: str) -> float:
    """`mean_apgr` averages APGR over the evaluated benchmarks; `apgr:<bench>` picks one."""
    if metric == "mean_apgr":
        # NaN on any benchmark makes the mean NaN: a router is never judged on the
        # benchmarks it happens to be defined on only.
        return float(evaluation["apgr"].astype(float).mean(skipna=False))
    if metric.startswith("apgr:"):
        bench = metric.split(":", 1)[1]
        row = evaluation[evaluation["benchmark"] == bench]
        if row.empty:
            raise ValueError(f"metric {metric!r}: benchmark {bench!r} was not evaluated; have {list(evaluation['benchmark'])}")
        return float(row["apgr"].iloc[0])
    raise ValueError(f"unknown publish metric {metric!r}; expected 'mean_apgr' or 'apgr:<benchmark>'")


def publish_router(
    router: dict,
    evaluation: dict,
    *,
    metric: str = "mean_apgr",
    margin: float = 0.0,
    artifact_root: str | None = None,
) -> dict:
    """Promote `router` if its score beats the champion's by more than `margin`.

    Returns the decision record (also stored). Re-running with the same router and
    evaluation decides the same way and changes nothing.
    """
    store = ArtifactStore(artifact_root)
    router_ref, eval_ref = ArtifactRef.of(router), ArtifactRef.of(evaluation)
    evaluation_table = load_table(eval_ref, store)
    score = headline_score(evaluation_table, metric)
    current = read_champion(store)

    if score != score:  # NaN
        promote, reason = False, f"{metric} is undefined (NaN) for this router; not promotable"
    elif current is None:
        promote, reason = True, "no champion yet"
    elif current["router"]["key"] == router_ref.key:
        promote, reason = False, "this router is already the champion"
    elif score > current["score"] + margin:
        promote, reason = True, f"{metric} {score:.4f} beats champion {current['score']:.4f} by more than {margin}"
    else:
        promote, reason = False, f"{metric} {score:.4f} does not beat champion {current['score']:.4f} by more than {margin}"

    now = datetime.now(timezone.utc).isoformat()
    decision = {
        "router": router_ref.to_dict(),
        "evaluation": eval_ref.to_dict(),
        "metric": metric,
        "margin": margin,
        "score": score,
        "champion_before": None if current is None else {"router": current["router"], "score": current["score"]},
        "promoted": promote,
        "reason": reason,
        "decided_at": now,
        "per_benchmark": evaluation_table.to_dict(orient="records"),
    }
    # A log, not a cache: every decision is kept, re-runs included.
    decision_key = f"champion/decisions/{now.replace(':', '-')}-{stable_hash([router_ref.fingerprint, eval_ref.fingerprint])}.json"
    if promote:
        record = {k: decision[k] for k in ("router", "evaluation", "metric", "score", "per_benchmark")}
        record["promoted_at"] = now
        record["previous"] = None if current is None else current["router"]
        store.write_json(f"champion/history/{now.replace(':', '-')}.json", record)
        store.write_json(CHAMPION_KEY, record)  # the single write that switches champions
        log.info("promoted %s: %s", router_ref.uri, reason)
    else:
        log.info("kept champion: %s", reason)
    store.write_json(decision_key, decision)
    return decision


def rollback_champion(artifact_root: str | None = None) -> dict:
    """Point `champion` back at the router it replaced."""
    store = ArtifactStore(artifact_root)
    current = read_champion(store)
    if current is None or current.get("previous") is None:
        raise RuntimeError("no earlier champion to roll back to")
    for key in reversed(store.list("champion/history/")):
        record = store.read_json(key)
        if record["router"]["key"] == current["previous"]["key"]:
            store.write_json(CHAMPION_KEY, record)
            return record
    raise RuntimeError(f"history has no record for previous champion {current['previous']['key']}")
