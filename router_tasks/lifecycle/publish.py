"""Publish: move the `champion` pointer to a new router only when it beats the current one.

The router artifact itself is already immutable in the store (the train stage wrote it);
publishing only rewrites one small object, `champion/CHAMPION.json`, so a crash leaves
either the old or the new champion, never a mix. Every decision is kept under
`champion/decisions/`, and each champion ever promoted under `champion/history/`, so a
rollback is `rollback_champion()` away.

Like with like: both routers are scored on the same evaluation spec (benchmarks,
protocol, prompt caps, holdout and data fingerprints, the own-labels set: the `spec` in
the evaluate artifact's metrics.json). When the champion's spec differs from the
challenger's, the champion is re-scored on the challenger's spec first (the evaluate stage
is idempotent, so this costs one evaluation at most once); if it cannot be (e.g. it trained
on prompts that spec holds out), the challenger is not promoted and the decision says why.

Servable on publish: before the pointer moves to a new router, the router is calibrated
(an ordinary `calibrate` artifact, as `tela calibrate` writes) on a sample of its own
labelled prompts, the ones it trained on and the ones held out for its evaluation, at the
share of them the labels say needed the strong model (`serving_sample`). So the gateway
finds a stored calibration for every champion and every policy (`tela-auto`,
`tela-auto@<share>`, ...) works the moment it is published. `tela calibrate` re-targets
it later (the newest calibration wins).

Two publishers at once cannot lose a decision: the pointer moves by compare-and-swap on
the version each one read (`ArtifactStore.write_if`); the one that loses the race reads
the new champion and decides again against it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pandas as pd

from router_tasks.core.schemas import CHAMPION_KEY, finite_or_none, is_own_source
from router_tasks.core.stage import ArtifactRef, load_table, stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.calibration import calibrate_router
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.lifecycle.loop_settings import recordable

log = logging.getLogger(__name__)


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
            raise ValueError(
                f"metric {metric!r}: benchmark {bench!r} was not evaluated; have {list(evaluation['benchmark'])}"
            )
        return float(row["apgr"].iloc[0])
    raise ValueError(f"unknown publish metric {metric!r}; expected 'mean_apgr' or 'apgr:<benchmark>'")


def evaluation_spec_of(store: ArtifactStore, evaluation: ArtifactRef) -> dict | None:
    """The `spec` an evaluate artifact was scored on (None for artifacts without one)."""
    key = f"{evaluation.key}/metrics.json"
    if not store.exists(key):
        return None
    return store.read_json(key).get("spec")


def _rescore_champion(store: ArtifactStore, current: dict, spec: dict, metric: str) -> tuple[float, dict]:
    """(score, evaluation ref) of the champion on the challenger's `spec`; raises when it cannot be."""

    ref = evaluate_router(
        current["router"],
        benchmarks=spec["benchmarks"],
        protocol=spec.get("protocol"),
        max_prompts=spec.get("max_prompts"),
        num_results=spec["num_results"],
        random_seeds=spec["random_seeds"],
        own=spec.get("own", True),
        own_labels=spec.get("own_labels"),
        artifact_root=store.root,
    )
    got = evaluation_spec_of(store, ArtifactRef.of(ref))
    if got != spec:
        diff = sorted(k for k in set(got or {}) | set(spec) if (got or {}).get(k) != spec.get(k))
        raise ValueError(f"re-scored on the challenger's spec, the champion's spec still differs in {diff}")
    return headline_score(load_table(ref, store), metric), ref


def _decide(store, router_ref, score, spec, current, metric, margin) -> tuple[bool, str, dict | None]:
    """(promote, reason, champion re-score record or None) against the `current` champion record."""
    if score != score:  # NaN
        return False, f"{metric} is undefined (NaN) for this router; not promotable", None
    if current is None:
        return True, "no champion yet", None
    if current["router"]["key"] == router_ref.key:
        return False, "this router is already the champion", None
    champion_score, rescored = current["score"], None
    if current.get("spec") != spec:
        try:
            champion_score, ref = _rescore_champion(store, current, spec, metric)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot compare": say so, keep the champion
            return (
                False,
                (
                    f"champion was scored on another evaluation spec and cannot be re-scored on this one "
                    f"({type(e).__name__}: {e}); not comparing unlike scores, champion kept"
                ),
                None,
            )
        rescored = {"evaluation": ref, "score": champion_score, "score_on_own_spec": current["score"]}
    if champion_score != champion_score:
        return False, f"champion's {metric} on this spec is undefined (NaN); not comparing, champion kept", rescored
    on = " (champion re-scored on this spec)" if rescored else ""
    if score > champion_score + margin:
        return True, f"{metric} {score:.4f} beats champion {champion_score:.4f}{on} by more than {margin}", rescored
    return (
        False,
        f"{metric} {score:.4f} does not beat champion {champion_score:.4f}{on} by more than {margin}",
        rescored,
    )


#: prompts in the calibration sample written on publish (each is scored by the router once)
SERVING_SAMPLE_PROMPTS = 500


def serving_sample(
    store: ArtifactStore, router_ref: ArtifactRef, max_prompts: int = SERVING_SAMPLE_PROMPTS
) -> tuple[list[str], float | None, str]:
    """(prompts, target strong share, where the target came from) to calibrate a router on.

    The prompts are its training labels' prompts (the run's own when it has any, else
    every one: a router of bundled labels only), those labelled for both of its models
    when there are any, at most `max_prompts` chosen by prompt id (a content hash: a fixed
    pseudo-random sample). The target is the share of them on which the labels found the
    strong model better than the weak one: the router sends that many of the prompts it
    rates hardest to the strong model. With no prompt labelled for both, None: the
    router's neutral threshold.
    """
    meta = store.read_json(f"{router_ref.key}/router.json")
    labels_key = (meta.get("training_data") or {}).get("labels_key")
    if not labels_key:
        raise ValueError(
            f"{store.uri(router_ref.key)}: router.json names no labels artifact "
            "(training_data.labels_key): no prompts to calibrate it on"
        )
    labels = store.read_parquet(f"{labels_key}/data.parquet")
    if "source" in labels and is_own_source(labels["source"]).any():
        labels = labels[is_own_source(labels["source"])]
    labels = labels.assign(prompt_id=labels["prompt_id"].astype(str))
    text = labels.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"].astype(str)
    strong, weak = meta["strong_model"], meta["weak_model"]
    quality = labels[labels["quality"].notna()].groupby(["prompt_id", "model"])["quality"].mean().unstack("model")
    pair = quality[[strong, weak]].dropna() if {strong, weak} <= set(quality.columns) else quality.iloc[:0]
    if pair.empty:
        ids = sorted(text.index)[:max_prompts]
        return text.loc[ids].tolist(), None, f"no prompt labelled for both {strong} and {weak}"
    ids = sorted(pair.index)[:max_prompts]
    share = float((pair.loc[ids, strong] > pair.loc[ids, weak]).mean())
    return (
        text.loc[ids].tolist(),
        share,
        (f"the share of these {len(ids)} prompts on which the labels found {strong} better than {weak}"),
    )


def calibrate_for_serving(store: ArtifactStore, router_ref: ArtifactRef) -> dict:
    """The calibrate artifact publishing writes for `router_ref` (idempotent: the same
    router and sample reuse it)."""

    prompts, share, why = serving_sample(store, router_ref)
    return calibrate_router(router_ref.to_dict(), prompts, share, target_from=why, artifact_root=store.root)


#: compare-and-swap attempts before giving up (each lost race means another publisher won)
MAX_PUBLISH_ATTEMPTS = 20


def publish_router(
    router: dict,
    evaluation: dict,
    *,
    metric: str = "mean_apgr",
    margin: float = 0.0,
    settings: dict | None = None,
    settings_from: dict | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Promote `router` if its score beats the champion's (on the same spec) by more than `margin`.

    Returns the decision record (also stored). Re-running with the same router and
    evaluation decides the same way and changes nothing. `settings`: the settings the
    router was made with (pipeline params but `source`/`sample`, `loop_settings`), kept in
    the champion record so the loop's scheduled runs label and retrain the same way;
    `settings_from` says where each came from.
    """
    store = ArtifactStore(artifact_root)
    if settings is not None:
        settings = recordable(settings, where="publish settings")
        settings_from = settings_from or {k: "the publishing run's params" for k in settings}
    router_ref, eval_ref = ArtifactRef.of(router), ArtifactRef.of(evaluation)
    evaluation_table = load_table(eval_ref, store)
    score = headline_score(evaluation_table, metric)
    spec = evaluation_spec_of(store, eval_ref)

    calibration = None
    # noqa below: a B007 false positive, `attempt` is read after the loop (the decision's "attempts")
    for attempt in range(MAX_PUBLISH_ATTEMPTS):  # noqa: B007
        data, version = store.read_versioned(CHAMPION_KEY)
        current = None if data is None else json.loads(data)
        promote, reason, rescored = _decide(store, router_ref, score, spec, current, metric, margin)
        now = datetime.now(UTC).isoformat()
        if not promote:
            break
        if calibration is None:  # before the pointer moves: a gateway never loads it uncalibrated
            calibration = calibrate_for_serving(store, router_ref)
        record = {
            "router": router_ref.to_dict(),
            "evaluation": eval_ref.to_dict(),
            "metric": metric,
            "score": score,
            "per_benchmark": _records(evaluation_table),
            "spec": spec,
            "promoted_at": now,
            "previous": None if current is None else current["router"],
            "calibration": calibration,
            "settings": settings,
            "settings_from": settings_from,
        }
        body = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        if store.write_if(CHAMPION_KEY, body, version):  # the single write that switches champions
            store.write_json(f"champion/history/{now.replace(':', '-')}-{router_ref.fingerprint[:12]}.json", record)
            log.info("promoted %s: %s", router_ref.uri, reason)
            break
        log.info("champion changed while deciding (another publisher); deciding again against it")
    else:
        raise RuntimeError(
            f"could not move the champion pointer after {MAX_PUBLISH_ATTEMPTS} attempts: "
            "other publishers keep replacing it"
        )

    decision = {
        "router": router_ref.to_dict(),
        "evaluation": eval_ref.to_dict(),
        "metric": metric,
        "margin": margin,
        "score": score,
        "spec": spec,
        "champion_before": None if current is None else {"router": current["router"], "score": current["score"]},
        "champion_rescored": rescored,
        "promoted": promote,
        "reason": reason,
        "calibration": calibration if promote else None,
        "settings": settings,
        "settings_from": settings_from,
        "decided_at": now,
        "attempts": attempt + 1,
        "per_benchmark": _records(evaluation_table),
    }
    if not promote:
        log.info("kept champion: %s", reason)
    # A log, not a cache: every decision is kept, re-runs included.
    decision_key = (
        f"champion/decisions/{now.replace(':', '-')}-{stable_hash([router_ref.fingerprint, eval_ref.fingerprint])}.json"
    )
    store.write_json(decision_key, decision)
    return decision


def _records(table: pd.DataFrame) -> list[dict]:
    """The evaluation rows as JSON-safe records: an undefined figure (NaN) becomes null."""
    return [{k: finite_or_none(v) for k, v in r.items()} for r in table.to_dict(orient="records")]


def rollback_champion(artifact_root: str | None = None) -> dict:
    """Point `champion` back at the router it replaced (a conditional write, like publishing)."""
    store = ArtifactStore(artifact_root)
    data, version = store.read_versioned(CHAMPION_KEY)
    current = None if data is None else json.loads(data)
    if current is None or current.get("previous") is None:
        raise RuntimeError("no earlier champion to roll back to")
    for key in reversed(store.list("champion/history/")):
        record = store.read_json(key)
        if record["router"]["key"] == current["previous"]["key"]:
            if not store.write_if(
                CHAMPION_KEY, json.dumps(record, indent=2, sort_keys=True, default=str).encode(), version
            ):
                raise RuntimeError("the champion changed during the rollback (another publisher); run it again")
            return record
    raise RuntimeError(f"history has no record for previous champion {current['previous']['key']}")
