"""The retraining loop's library side: which labels to retrain on, and which of several
freshly trained routers to put up against the champion.

`dags/router_retraining.py` runs train -> evaluate -> publish whenever new labels arrive
(the labels Asset) or on a weekly cron, whichever comes first. A run learns its labels from,
in order: the `labels` DAG param (a ref, key or URI), the newest triggering labels-Asset
event (its extra carries `{"labels": ref}`, written by whoever emits it with
`record_labels`), or the `labels/LATEST.json` pointer `record_labels` keeps in the store
(the cron case: no event, retrain on the newest labels known).

Which models to train for, and how to evaluate, come from the settings recorded with
those labels (the pipeline run that made them) and the champion's, under the team's
Variable and the run's params (`retraining_settings`, see `loop_settings`): never from
the DAG's defaults alone, which are the bundled demo pair.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from router_tasks.core.stage import ArtifactRef, load_table, resolve_ref
from router_tasks.core.store import ArtifactStore
from router_tasks.lifecycle import loop_settings
from router_tasks.lifecycle.publish import headline_score, publish_router
from router_tasks.training.train import train_device

log = logging.getLogger(__name__)

LATEST_LABELS_KEY = "labels/LATEST.json"


def split_by_device(router_types: Sequence[str], use_gpu: bool = True) -> dict:
    """The `router_types` param split by where each type trains (`train.train_device`).

    Returns `{"cpu": [...], "gpu": [...], "order": ["cpu"|"gpu", ...]}`: one train task is
    mapped over each list, `order` lets `in_type_order` put their results back in the
    param's order. Unknown types fail here, before anything trains.
    """

    types = list(router_types or [])
    if not types:
        raise ValueError("router_types is empty: nothing to train")
    order = [train_device(t, use_gpu) for t in types]
    return {
        "cpu": [t for t, d in zip(types, order, strict=False) if d == "cpu"],
        "gpu": [t for t, d in zip(types, order, strict=False) if d == "gpu"],
        "order": order,
    }


def in_type_order(split: Mapping, cpu_results: Sequence, gpu_results: Sequence) -> list:
    """The two train tasks' results as one list in the `router_types` order (`split` is
    `split_by_device`'s answer); publishing breaks ties by that order."""
    cpu, gpu = list(cpu_results), list(gpu_results)
    if (len(cpu), len(gpu)) != (len(split["cpu"]), len(split["gpu"])):
        raise ValueError(
            f"expected {len(split['cpu'])} CPU and {len(split['gpu'])} GPU results, got {len(cpu)} and {len(gpu)}"
        )
    it = {"cpu": iter(cpu), "gpu": iter(gpu)}
    return [next(it[d]) for d in split["order"]]


def record_labels(labels: dict, *, settings: Mapping | None = None, artifact_root: str | None = None) -> dict:
    """Make `labels` (a labels/validate ref) the newest labels; returns the Asset event extra.

    Call it from the task that emits the labels Asset and attach the returned dict as the
    event's extra, so an asset-triggered retraining run knows exactly which labels.
    `settings`: the run's settings (`loop_settings.run_settings`), recorded beside the
    labels (no secrets) so retraining trains for the models they are about.
    """
    store = ArtifactStore(artifact_root)
    ref = ArtifactRef.of(labels).to_dict()
    extra = {"labels": ref}
    if settings is not None:
        extra["settings"] = loop_settings.recordable(settings, where="labels settings")
    store.write_json(LATEST_LABELS_KEY, {**extra, "recorded_at": datetime.now(UTC).isoformat()})
    return extra


def labels_settings(
    labels: Mapping, event_extras: Iterable[Mapping | None] = (), *, artifact_root: str | None = None
) -> tuple[str, dict | None]:
    """(layer name, settings or None) recorded with the labels artifact `labels` (a ref):
    from the newest event that carries these labels, else `labels/LATEST.json` when it
    names them."""
    key = ArtifactRef.of(labels).key
    for extra in reversed([e for e in event_extras if isinstance(e, Mapping)]):
        if (extra.get("labels") or {}).get("key") == key and extra.get("settings") is not None:
            return f"labels {key} (Asset event)", extra["settings"]
    store = ArtifactStore(artifact_root)
    if store.exists(LATEST_LABELS_KEY):
        latest = store.read_json(LATEST_LABELS_KEY)
        if (latest.get("labels") or {}).get("key") == key and latest.get("settings") is not None:
            return f"labels {key} ({LATEST_LABELS_KEY})", latest["settings"]
    return f"labels {key} (record no settings)", None


def retraining_settings(
    labels: Mapping,
    event_extras: Iterable[Mapping | None] = (),
    *,
    variable: Mapping | None = None,
    params: Mapping | None = None,
    artifact_root: str | None = None,
) -> dict:
    """The settings a retraining run on `labels` uses, and where each came from
    (`loop_settings.resolve`: the champion's, the labels', the Variable's, the run's
    params; None params are left to the layers below). Fails at once, naming where the
    pair came from, when the labels hold no labels for the strong or the weak model."""
    store = ArtifactStore(artifact_root)
    given = {k: v for k, v in (params or {}).items() if v is not None and k in loop_settings.SETTINGS_KEYS}
    resolved = loop_settings.resolve(
        [
            loop_settings.champion_settings(store),
            labels_settings(labels, event_extras, artifact_root=artifact_root),
            (f"Variable {loop_settings.VARIABLE}", variable),
            ("this run's params", given or None),
        ]
    )
    models = sorted(load_table(labels, store)["model"].astype(str).unique())
    for role in ("strong_model", "weak_model"):
        name = resolved["settings"][role]
        if name not in models:
            raise ValueError(
                f"{role} {name!r} (from {resolved['from'][role]}) has no labels in {ArtifactRef.of(labels).key}; "
                f"labelled models: {models}. Name the pair in the run's params or in the Airflow Variable "
                f'{loop_settings.VARIABLE} (e.g. {{"strong_model": ..., "weak_model": ...}})'
            )
    log.info("retraining settings:\n%s", loop_settings.describe(resolved))
    return resolved


def resolve_labels(
    labels: str | Mapping | None = None,
    event_extras: Iterable[Mapping | None] = (),
    *,
    artifact_root: str | None = None,
) -> dict:
    """The labels ref a retraining run should train on (see the module docstring)."""
    store = ArtifactStore(artifact_root)
    if labels not in (None, "", {}):
        return resolve_ref(labels, store)
    with_labels = [e["labels"] for e in event_extras if isinstance(e, Mapping) and e.get("labels")]
    if with_labels:
        return resolve_ref(with_labels[-1], store)  # events come oldest first: the newest wins
    if store.exists(LATEST_LABELS_KEY):
        return resolve_ref(store.read_json(LATEST_LABELS_KEY)["labels"], store)
    raise FileNotFoundError(
        f"no labels to retrain on: no 'labels' param, no labels Asset event carrying one, and no "
        f"{store.uri(LATEST_LABELS_KEY)} (written by router_tasks.lifecycle.retraining.record_labels)"
    )


def publish_best(
    routers: Sequence[dict],
    evaluations: Sequence[dict],
    *,
    metric: str = "mean_apgr",
    margin: float = 0.0,
    settings: Mapping | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Put the best of several candidates (by `metric`) up against the champion.

    One candidate, one decision: comparing candidates among themselves first keeps the
    decision log to one entry per run. Returns `publish_router`'s decision, plus
    `candidates` (router key and score of each). `settings`: the run's resolved settings
    (`retraining_settings`); the champion records them with the winner's router type and
    params.
    """

    routers, evaluations = list(routers), list(evaluations)
    if not routers or len(routers) != len(evaluations):
        raise ValueError(f"publish_best: {len(routers)} routers and {len(evaluations)} evaluations")
    store = ArtifactStore(artifact_root)
    candidates = []
    for r, e in zip(routers, evaluations, strict=False):
        score = headline_score(load_table(e, store), metric)
        candidates.append({"router": ArtifactRef.of(r).key, "evaluation": ArtifactRef.of(e).key, "score": score})
    # max() keeps the first of equal scores: the order of the router_types param breaks ties
    # (a NaN score, e.g. a benchmark the router could not be scored on, never wins)
    best = max(
        range(len(candidates)),
        key=lambda i: -math.inf if math.isnan(candidates[i]["score"]) else candidates[i]["score"],
    )
    log.info(
        "candidates: %s; best %s", [(c["router"], round(c["score"], 4)) for c in candidates], candidates[best]["router"]
    )
    recorded = recorded_from = None
    if settings is not None:
        meta = store.read_json(f"{ArtifactRef.of(routers[best]).key}/router.json")
        winner = f"the winning router {ArtifactRef.of(routers[best]).key}"
        recorded = {**settings["settings"], "router_type": meta["kind"], "router_params": meta.get("params") or {}}
        recorded_from = {**settings["from"], "router_type": winner, "router_params": winner}
    decision = publish_router(
        routers[best],
        evaluations[best],
        metric=metric,
        margin=margin,
        settings=recorded,
        settings_from=recorded_from,
        artifact_root=artifact_root,
    )
    decision["candidates"] = candidates
    return decision
