"""Many-model evaluation on real per-prompt results: cost-quality curves, cross-fit.

For a task of the bundled ZeroEval data (`data/zeroeval.py`: GSM8K or CRUXEval, the
recorded replies of 44-51 real LLMs) and a pool of models, every policy is a curve of
(dollars per 1k prompts, accuracy) points, measured on prompts no model or setting in it
was fitted or chosen on:

- single models: one point each; the **zero router** is the upper convex hull of those
  points (RouterBench's "best mix of single models": any point on it is reached by
  sending a fixed share of prompts to one model and the rest to another);
- **oracle**: per prompt argmax (correct - lambda * cost) with the true outcomes, lambda
  swept: the ceiling any one-call router could reach;
- **random**: a uniformly random pool model per prompt;
- **one call per prompt, per router kind**: routers are trained per fold (k-fold by
  prompt) on the other folds' labels, predict every model's quality and cost on the
  held-out prompts, and the frontier policy (`routing.choice.route_frontier`) meets each
  budget by bisection on *predicted* cost; the point is the realised cost and accuracy;
- **cascades** (`evaluation.cascades`): answer agreement, a trained verifier over the
  replies, the router's confidence; which cascade runs at a budget is chosen on the
  training folds (nested), and its held-out outcome is reported.

Headline figures per curve (`curve_metrics`): the area between it and the zero-router
hull over log-cost, from the cheapest to the dearest pool model, as a share of the
oracle's area there (RouterBench's AIQ idea, normalised); the worst gap below the hull;
the cost at which it matches the best single model's accuracy (share of that model's
cost); its accuracy at the cheapest model's cost.

Protocols: `crossfit` (the above: folds by prompt, so a router has trained on other
prompts of the same task) and `leave-group-out` (folds by task: every router is trained on
all of the *other* bundled task's prompts with the same pool and scored on every prompt of
this one, as a team's router meets a kind of work it has no labels for; cascades are left
out there, because choosing one is done on the scored task's own training folds).

`evaluate_to_dir` writes metrics.json, curve.csv, metrics.md (the table), plot.png and
decisions.parquet (per prompt and policy setting: models called, the model whose answer
is returned, correct, cost), the output of
`tela evaluate --benchmark zeroeval-gsm8k|zeroeval-crux --pool A,B,... --protocol crossfit|leave-group-out`.

Code: this module runs the evaluation (`evaluate_many`) and writes it (`evaluate_to_dir`);
the task's data and folds are `many_models_data`, the curves' geometry and figures
`many_models_curves`, the policies' curves (routers, cascades) `many_models_policies`, the
table, markdown and plot `many_models_report`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from router_tasks.core.store import ArtifactStore
from router_tasks.data import zeroeval as ze
from router_tasks.evaluation.many_models_curves import curve_metrics, oracle_points, upper_hull
from router_tasks.evaluation.many_models_data import (
    CROSSFIT,
    LEAVE_TASK_OUT,
    PROTOCOLS,
    load_task,
    other_task,
    transfer_pool,
)
from router_tasks.evaluation.many_models_policies import (
    cascade_curves,
    crossfit_router,
    one_call_curve,
    one_call_nested_curve,
    transfer_router,
)
from router_tasks.evaluation.many_models_report import plot_png, render_markdown
from router_tasks.routers.embeddings import Embedder

log = logging.getLogger(__name__)

DEFAULT_ROUTER_KINDS = ("knn", "mf", "ensemble")
N_BUDGETS = 24


def evaluate_many(
    task: str,
    pool: Sequence[str] | None = None,
    *,
    router_kinds: Sequence[str] = DEFAULT_ROUTER_KINDS,
    folds: int = 5,
    prices: dict | None = None,
    cascades: bool = True,
    artifact_root: str | None = None,
    router_params: dict | None = None,
    seed: int = 0,
    protocol: str = CROSSFIT,
) -> dict:
    """Every curve and figure for one task and pool (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"many-model protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    started = time.time()
    train = None
    if protocol == LEAVE_TASK_OUT:
        train_task = other_task(task)
        pool = transfer_pool(ze.BENCHMARKS.get(task, task), train_task, pool)
        train = load_task(train_task, pool, prices, folds, seed)
        cascades = False
    data = load_task(task, pool, prices, folds, seed)
    singles = pd.DataFrame(
        {"model": data.pool, "cost_per_1k": 1000 * data.cost.mean(axis=0), "accuracy": data.correct.mean(axis=0)}
    )
    hull = upper_hull(singles["cost_per_1k"], singles["accuracy"])
    oracle = oracle_points(data.correct, data.cost)
    oracle = (oracle[0] * 1000, oracle[1])
    lo, hi = float(singles["cost_per_1k"].min()), float(singles["cost_per_1k"].max())
    grid = np.geomspace(lo, hi, 400)
    best_row = singles.sort_values(["accuracy", "cost_per_1k"], ascending=[False, True]).iloc[0]
    best = (float(best_row["accuracy"]), float(best_row["cost_per_1k"]))
    # a log grid plus every single model's cost: the hull's kinks are where curves are read
    budgets = (
        np.unique(np.concatenate([np.geomspace(lo * 0.6, hi * 1.05, N_BUDGETS), singles["cost_per_1k"].to_numpy()]))
        / 1000.0
    )

    embedder = None
    if any(k != "random" for k in router_kinds):
        embedder = Embedder(ArtifactStore(artifact_root)) if artifact_root is not None else Embedder()
    curves, decisions, preds = [], [], {}
    for kind in router_kinds:
        t0 = time.time()
        if train is not None:  # trained on the other task: no fold of this one to choose settings on
            preds[kind] = transfer_router(kind, train, data, embedder=embedder, params=(router_params or {}).get(kind))
            curve, dec = one_call_curve(data, preds[kind]["quality"], preds[kind]["cost"], budgets, f"router-{kind}")
            curves.append(curve)
            decisions.append(dec)
            log.info(
                "%s %s router trained on %s (%d prompts) in %.1f s",
                data.task,
                kind,
                train.task,
                train.n,
                time.time() - t0,
            )
            continue
        preds[kind] = crossfit_router(
            kind, data, embedder=embedder, params=(router_params or {}).get(kind), nested=True
        )
        curve, dec = one_call_curve(data, preds[kind]["quality"], preds[kind]["cost"], budgets, f"router-{kind}-raw")
        curves.append(curve)
        decisions.append(dec)
        curve, dec = one_call_nested_curve(data, preds[kind], budgets, f"router-{kind}")
        curves.append(curve)
        decisions.append(dec)
        log.info("%s %s router cross-fit in %.1f s", data.task, kind, time.time() - t0)
    if cascades:
        t0 = time.time()
        c_curves, c_dec = cascade_curves(data, budgets, preds.get("knn"))
        curves += c_curves
        decisions += c_dec
        log.info("%s cascades in %.1f s", data.task, time.time() - t0)
    curve_table = pd.concat(curves, ignore_index=True)
    metrics = {}
    for policy, g in curve_table.groupby("policy", sort=False):
        metrics[policy] = curve_metrics(
            g["cost_per_1k"], g["accuracy"], hull=hull, oracle=oracle, grid=grid, best=best, cheapest_cost=lo
        )
    metrics["oracle"] = curve_metrics(
        oracle[0], oracle[1], hull=hull, oracle=oracle, grid=grid, best=best, cheapest_cost=lo
    )
    dec = pd.concat(decisions, ignore_index=True)
    dec.insert(0, "prompt_id", data.prompt_ids[dec["prompt_index"].to_numpy()])
    dec = dec.drop(columns=["prompt_index"])
    for col in ("policy", "setting", "models_called", "answered_by"):
        dec[col] = dec[col].astype("category")
    return {
        "task": data.task,
        "benchmark": {v: k for k, v in ze.BENCHMARKS.items()}[data.task],
        "pool": data.pool,
        "prompts": data.n,
        "folds": int(folds) if train is None else 1,
        "protocol": protocol,
        "trained_on": None if train is None else {"task": train.task, "prompts": train.n},
        "router_kinds": list(router_kinds),
        "single_models": singles.to_dict(orient="records"),
        "best_single": {"model": str(best_row["model"]), "accuracy": best[0], "cost_per_1k": best[1]},
        "cheapest_single": {"model": str(singles.loc[singles["cost_per_1k"].idxmin(), "model"]), "cost_per_1k": lo},
        "random": {"cost_per_1k": float(singles["cost_per_1k"].mean()), "accuracy": float(singles["accuracy"].mean())},
        "hull": {"cost_per_1k": hull[0].tolist(), "accuracy": hull[1].tolist()},
        "oracle": {"cost_per_1k": oracle[0].tolist(), "accuracy": oracle[1].tolist()},
        "metrics": metrics,
        "curve": curve_table,
        "decisions": dec,
        "seconds": round(time.time() - started, 1),
        "tokenizer": ze.TOKENIZER_NAME,
    }


def evaluate_to_dir(
    benchmark: str,
    output: str,
    *,
    pool: Sequence[str] | None = None,
    protocol: str | None = "crossfit",
    folds: int = 5,
    router_kinds: Sequence[str] = DEFAULT_ROUTER_KINDS,
    prices=None,
    cascades: bool = True,
    artifact_root: str | None = None,
) -> dict:
    """Run `evaluate_many` and write metrics.json, metrics.md, curve.csv, plot.png and
    decisions.parquet into the local folder `output`."""
    protocol = protocol or CROSSFIT
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"{benchmark}: many-model protocols are {list(PROTOCOLS)} (leave-group-out: trained on "
            f"the other task), got {protocol!r}"
        )
    if benchmark not in ze.BENCHMARKS:
        raise ValueError(f"unknown many-model benchmark {benchmark!r}; known: {sorted(ze.BENCHMARKS)}")
    result = evaluate_many(
        benchmark,
        pool,
        router_kinds=router_kinds,
        folds=folds,
        prices=prices,
        cascades=cascades,
        artifact_root=artifact_root,
        protocol=protocol,
    )
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics.json": json.dumps(
            {k: v for k, v in result.items() if k not in ("curve", "decisions")}, indent=2, default=float
        ).encode(),
        "metrics.md": render_markdown(result).encode(),
        "plot.png": plot_png(result),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    result["curve"].to_csv(out / "curve.csv", index=False)
    result["decisions"].to_parquet(out / "decisions.parquet", index=False, compression="zstd")
    result["output_dir"] = str(out)
    result["files"] = sorted(p.name for p in out.iterdir())
    return result
