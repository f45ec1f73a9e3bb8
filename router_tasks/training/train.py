"""Train: fit a router on the validated labels and store it as an artifact.

Outputs (stages/train/<key>/):
    router.json             what `routers.load_router` needs, plus versions and metrics
    <weights>               the router's own files (e.g. knn.safetensors)
    train_prompts.parquet   prompt_id of every prompt trained on (evaluation's leakage check)
    data.parquet            training metrics, one row per model (in-sample: optimistic,
                            the held-out numbers come from the evaluate stage)

The run's own labels (`data.labels.own_eval_plan`): with enough of them a fixed hash
holdout of prompts is kept out of training so the evaluate stage can score the router on
them; with few, the router trains on all of them and evaluation cross-fits. The plan (and
`strong_quality`) is recorded in router.json's `training_data.own_eval`.

Prompt embeddings are cached in the artifact store (`cache/embeddings/...`), so
retraining with other params and evaluating on the same prompts skip the model.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pandas as pd

from router_tasks.core.schemas import check_strong_quality
from router_tasks.core.stage import ArtifactRef, read_manifest, resolve_ref, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.labels import own_eval_plan
from router_tasks.routers import EmbeddingRouter, make_router, needs_gpu, router_class, save_router
from router_tasks.routers.base import check_labels, resolve_params
from router_tasks.routers.embeddings import Embedder

log = logging.getLogger(__name__)

STAGE = "train"
STAGE_VERSION = "2"  # 2: own-labels holdout kept out of training


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC (ties count half); None when one class is absent."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def training_metrics(router, labels: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-model in-sample fit table, and summary metrics for router.json."""
    prompts = labels.drop_duplicates("prompt_id")[["prompt_id", "prompt"]].reset_index(drop=True)
    pred = router.predict_quality(prompts["prompt"].tolist())
    pred.index = prompts["prompt_id"].to_numpy()
    rows = []
    for model in router.models:
        sub = labels[labels["model"] == model]
        y = sub.groupby("prompt_id")["quality"].mean()
        p = pred.loc[y.index, model].to_numpy(float)
        yv = y.to_numpy(float)
        rows.append(
            {
                "model": model,
                "n_prompts": int(len(y)),
                "mean_quality": float(yv.mean()) if len(yv) else np.nan,
                "mean_predicted": float(p.mean()) if len(p) else np.nan,
                "mae": float(np.abs(p - yv).mean()) if len(p) else np.nan,
                "brier": float(((p - yv) ** 2).mean()) if len(p) else np.nan,
                "auc": _auc(p, yv >= 0.5) if len(p) else None,
            }
        )
    table = pd.DataFrame(rows)
    table["auc"] = table["auc"].astype(float)

    # How well strong_win_rate ranks the prompts where the strong model really did better.
    q = labels.groupby(["prompt_id", "model"])["quality"].mean().unstack("model")
    summary = {"in_sample": True, "per_model": table.to_dict(orient="records")}
    if {router.strong_model, router.weak_model} <= set(q.columns):
        both = q[[router.strong_model, router.weak_model]].dropna()
        gap = both[router.strong_model] - both[router.weak_model]
        win = router.strong_win_rate(None, quality=pred.loc[both.index])
        summary["n_pairs"] = int(len(both))
        summary["strong_better_fraction"] = float((gap > 0).mean()) if len(gap) else None
        summary["strong_win_auc"] = _auc(win, (gap > 0).to_numpy())
    return table, summary


def train_device(router_type: str, use_gpu: bool = True) -> str:
    """Where a `router_type` router trains: "gpu" (the DAGs' GPU queue and pool) for the
    kinds that need one (`routers.GPU_ROUTERS`) unless `use_gpu` is off, else "cpu"."""
    return "gpu" if use_gpu and needs_gpu(router_type) else "cpu"


def training_labels_ref(store: ArtifactStore, router_ref: ArtifactRef) -> dict:
    """The labels artifact a train artifact was trained on, from its manifest (checked
    unchanged since)."""
    manifest = read_manifest(store, router_ref)
    recorded = (manifest.get("inputs") or {}).get("labels")
    if not recorded:
        raise ValueError(
            f"router artifact {store.uri(router_ref.key)} records no 'labels' input in its manifest: "
            "cannot retrain it (was it made by router_tasks.training.train.train_router?)"
        )
    ref = resolve_ref(recorded["key"], store)
    if ref["fingerprint"] != recorded["fingerprint"]:
        raise ValueError(
            f"training labels at {store.uri(recorded['key'])} changed since the router was trained "
            f"(fingerprint {ref['fingerprint']} != recorded {recorded['fingerprint']})"
        )
    return ref


def train_router(
    labels: dict,
    *,
    router_type: str = "knn",
    strong_model: str = "gpt-4-1106-preview",
    weak_model: str = "mistralai/Mixtral-8x7B-Instruct-v0.1",
    router_params: dict | None = None,
    use_gpu: bool = True,
    strong_quality: str = "labeled",
    own_holdout: bool = True,
    artifact_root: str | None = None,
    prices: dict | None = None,
) -> dict:
    """Train a `router_type` router on the labels artifact `labels`; returns its ref dict.

    `use_gpu=False` pins routers that can use a GPU (those with a `device` param) to the
    CPU; with True they take a GPU when one is present and fall back to the CPU.
    `strong_quality` ("labeled" / "assume_perfect", as the labels were built) is recorded
    in the router's metadata. `own_holdout=False` trains on every label (cross-fit folds:
    the fold's labels already lack the prompts it scores).
    Every router also learns each model's reply length (`Router.fit_costs`, from the
    labels' `output_tokens` when present); `prices` ({model: [input, output] $ per 1M
    tokens}) are stored with it so `tela score` / `tela route` can price calls.
    """
    check_strong_quality(strong_quality)
    store = ArtifactStore(artifact_root)
    cls = router_class(router_type)  # fail before any work on an unknown type or param
    router_params = dict(router_params or {})
    if not use_gpu and "device" in getattr(cls, "DEFAULT_PARAMS", {}):
        router_params["device"] = "cpu"
    # Not named `params`: Airflow passes its DAG params to a task argument of that name.
    resolved = resolve_params(cls, router_params)
    if strong_model == weak_model:
        raise ValueError(f"strong and weak model are both {strong_model!r}")

    def compute(ctx) -> None:
        started = time.time()
        full = ctx.read_input("labels")
        table = check_labels(full)
        models = sorted(table["model"].unique())
        for role, name in (("strong", strong_model), ("weak", weak_model)):
            if name not in models:
                raise ValueError(f"{role} model {name!r} has no labels; labelled models: {models}")
        log.info(
            "training %s router on %d labels, %d prompts, models %s",
            router_type,
            len(table),
            table["prompt_id"].nunique(),
            models,
        )
        plan = own_eval_plan(full, strong_model, weak_model) if own_holdout and "source" in full else {"protocol": None}
        if plan["protocol"] == "holdout":
            held = set(plan["heldout"])
            table = table[~table["prompt_id"].astype(str).isin(held)]
            log.info("own labels: %s; %d prompts kept out of training for evaluation", plan["why"], len(held))
        router = make_router(router_type, models, strong_model, weak_model, resolved)
        if isinstance(router, EmbeddingRouter):
            router.embedder = Embedder(store, model=router.representation)
        router.fit(table)
        router.fit_costs(full[full["quality"].notna()])
        if prices:
            router.prices = {m: prices[m] for m in models if m in prices}
        fit_s = time.time() - started

        metrics_table, metrics = training_metrics(router, table)
        metrics["fit_seconds"] = round(fit_s, 3)
        if getattr(router, "history", None):
            metrics["loss_history"] = [round(x, 6) for x in router.history]
        if getattr(router, "effective", None):  # what "auto" params became on this device
            metrics["effective_params"] = dict(router.effective)
        for row in metrics["per_model"]:
            log.info(
                "in-sample %s: n=%d mean quality %.3f, predicted %.3f, brier %.4f",
                row["model"],
                row["n_prompts"],
                row["mean_quality"],
                row["mean_predicted"],
                row["brier"],
            )
        log.info("in-sample strong-win AUC: %s", metrics.get("strong_win_auc"))

        prompt_ids = sorted(table["prompt_id"].astype(str).unique())
        labels_ref = ctx.inputs["labels"]
        training = {
            "labels_key": labels_ref.key,
            "labels_fingerprint": labels_ref.fingerprint,
            "n_labels": int(len(table)),
            "n_prompts": len(prompt_ids),
            "prompt_ids_sha256": hashlib.sha256("\n".join(prompt_ids).encode()).hexdigest(),
            "labels_per_model": {m: int(n) for m, n in table["model"].value_counts().sort_index().items()},
            "strong_quality": strong_quality,
            "own_eval": {k: v for k, v in plan.items() if k != "heldout"}
            | {
                "n_heldout": len(plan.get("heldout") or []),
                "heldout_sha256": hashlib.sha256("\n".join(plan.get("heldout") or []).encode()).hexdigest(),
            },
        }
        save_router(router, ctx, training=training, metrics=metrics)
        ctx.write_table(pd.DataFrame({"prompt_id": prompt_ids}), "train_prompts.parquet")
        ctx.write_table(metrics_table)
        ctx.stats.update(
            n_labels=int(len(table)),
            n_prompts=len(prompt_ids),
            fit_seconds=round(fit_s, 3),
            **(
                {f"embeddings_{k}": v for k, v in router.embedder.stats.items()}
                if isinstance(router, EmbeddingRouter)
                else {}
            ),
        )
        log.info("trained %s router in %.1f s", router_type, time.time() - started)

    return run_stage(
        STAGE,
        STAGE_VERSION,
        compute,
        inputs={"labels": labels},
        config={
            "router_type": router_type,
            "strong_model": strong_model,
            "weak_model": weak_model,
            "params": resolved,
            # embedding model id, base model identity: what the router builds on (Router.identity)
            "identity": cls.identity(resolved),
            "strong_quality": strong_quality,
            "own_holdout": own_holdout,
            **({"prices": {m: prices[m] for m in sorted(prices)}} if prices else {}),
        },
        store=store,
    )
