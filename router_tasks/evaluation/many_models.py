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
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.data import zeroeval as ze
from router_tasks.evaluation import cascades as cz

log = logging.getLogger(__name__)

DEFAULT_ROUTER_KINDS = ("knn", "mf", "ensemble")
N_BUDGETS = 24
#: cascades call first the most accurate models (on training prompts) that cost at most
#: each of CHEAP_SHARES of the most accurate model (N_CHEAP for the first share)
N_CHEAP = 4
CHEAP_SHARES = (0.1, 0.25)
#: lambdas ($^-1) the router may use to pick the last-resort model of an agreement cascade
ROUTER_LAMBDAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
CROSSFIT, LEAVE_TASK_OUT = "crossfit", "leave-group-out"
PROTOCOLS = (CROSSFIT, LEAVE_TASK_OUT)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@dataclass
class TaskData:
    task: str
    pool: list[str]
    prompt_ids: np.ndarray
    prompts: list[str]
    folds: np.ndarray
    correct: np.ndarray       # (n, m) bool
    cost: np.ndarray          # (n, m) recorded $ of each call
    answers: np.ndarray       # (n, m) normalised answers (None = no answer)
    input_tokens: np.ndarray  # (n,)
    tables: dict              # column -> (prompt_id x model) DataFrame
    prices: dict

    def frame(self, column: str) -> pd.DataFrame:
        return self.tables[column]

    @property
    def n(self) -> int:
        return len(self.prompt_ids)


def assign_folds(prompt_ids: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Balanced, deterministic folds by prompt: ids ordered by a salted hash, dealt round-robin."""
    import hashlib

    order = sorted(range(len(prompt_ids)),
                   key=lambda i: hashlib.sha256(f"tela-mm-{seed}:{prompt_ids[i]}".encode()).hexdigest())
    out = np.empty(len(prompt_ids), dtype=np.int64)
    out[order] = np.arange(len(prompt_ids)) % int(folds)
    return out


def load_task(task: str, pool: Sequence[str] | None = None, prices: dict | None = None, folds: int = 5,
              seed: int = 0) -> TaskData:
    """The pool's recorded outcomes on the prompts every pool model answered."""
    task = ze.BENCHMARKS.get(task, task)
    pool = list(pool or ze.POOLS[task])
    if len(set(pool)) != len(pool):
        raise ValueError(f"pool names a model twice: {pool}")
    prices = ze.read_prices(prices) if prices is not None else ze.bundled_prices()
    missing = [m for m in pool if m not in prices]
    if missing:
        raise ValueError(f"no price for pool model(s) {missing}")
    r = ze.results(task, models=pool)
    counts = r.groupby("prompt_id")["model"].nunique()
    keep = set(counts[counts == len(pool)].index)
    r = r[r["prompt_id"].isin(keep)]
    tables = {c: r.pivot(index="prompt_id", columns="model", values=c).reindex(columns=pool).sort_index()
              for c in ("correct", "answer", "has_answer", "parsed_json", "output_tokens", "reasoning_chars")}
    first = r.drop_duplicates("prompt_id").set_index("prompt_id").reindex(tables["correct"].index)
    ids = tables["correct"].index.to_numpy().astype(str)
    n_in = first["input_tokens"].to_numpy(np.float64)
    out_tok = tables["output_tokens"].to_numpy(np.float64)
    cost = np.column_stack([ze.call_cost(n_in, out_tok[:, j], prices[m]) for j, m in enumerate(pool)])
    answers = np.empty(out_tok.shape, dtype=object)
    raw = tables["answer"].to_numpy(object)
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            answers[i, j] = ze.normalized_answer(task, raw[i, j])
    return TaskData(task=task, pool=pool, prompt_ids=ids, prompts=first["question"].astype(str).tolist(),
                    folds=assign_folds(ids, folds, seed), correct=tables["correct"].to_numpy(bool), cost=cost,
                    answers=answers, input_tokens=n_in, tables=tables, prices={m: prices[m] for m in pool})


# --------------------------------------------------------------------------------------
# curves and their figures
# --------------------------------------------------------------------------------------
def upper_hull(cost: Sequence[float], acc: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing upper convex hull of (cost, acc) points (linear
    cost: mixing two policies reaches the segment between them)."""
    pts = sorted(zip(map(float, cost), map(float, acc)), key=lambda p: (p[0], -p[1]))
    hull: list[tuple[float, float]] = []
    for p in pts:
        if hull and p[1] <= hull[-1][1]:
            continue  # dearer and no better
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    xs, ys = zip(*hull)
    return np.array(xs), np.array(ys)


def step_interp(x: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """A curve's accuracy at cost x: linear between its points in cost, flat to the right
    of the last; NaN to the left of the first (it cannot spend that little)."""
    order = np.argsort(px, kind="stable")
    px, py = np.asarray(px, float)[order], np.asarray(py, float)[order]
    y = np.interp(x, px, py)
    y[x < px[0] * (1 - 1e-9)] = np.nan
    return y


def oracle_points(correct: np.ndarray, cost: np.ndarray, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    from router_tasks.routing.choice import frontier_choice

    spread = float(np.ptp(cost)) or 1.0
    xs, ys = [], []
    rows = np.arange(len(correct))
    for lam in np.concatenate([[0.0], np.geomspace(1e-3 / spread, 1e6 / spread, n)]):
        idx = frontier_choice(correct.astype(float), cost, lam)
        xs.append(cost[rows, idx].mean())
        ys.append(correct[rows, idx].mean())
    return upper_hull(xs, ys)


def curve_metrics(px, py, *, hull: tuple, oracle: tuple, grid: np.ndarray, best: tuple[float, float],
                  cheapest_cost: float) -> dict:
    """Headline figures of one curve (costs in $ per 1k prompts, accuracy as a share)."""
    px, py = np.asarray(px, float), np.asarray(py, float)
    h = step_interp(grid, *hull)
    o = step_interp(grid, *oracle)
    f = step_interp(grid, px, py)
    f_area = np.where(np.isnan(f), np.minimum(h, np.nanmin(py) if len(py) else 0.0), f)  # can't spend so little
    lx = np.log10(grid)
    area = float(np.trapezoid(f_area - h, lx))
    oracle_area = float(np.trapezoid(o - h, lx))
    gap = f - h
    best_acc, best_cost = best
    match = None
    order = np.argsort(px)
    sx, sy = px[order], py[order]
    for i in range(len(sx)):
        if sy[i] >= best_acc - 1e-12:
            if i == 0 or sy[i - 1] >= best_acc:
                match = sx[i]
            else:  # mixing the two neighbouring settings reaches it in between
                t = (best_acc - sy[i - 1]) / (sy[i] - sy[i - 1])
                match = sx[i - 1] + t * (sx[i] - sx[i - 1])
            break
    at_cheapest = step_interp(np.array([cheapest_cost]), px, py)[0]
    return {
        "area_vs_hull": area,
        "oracle_area_vs_hull": oracle_area,
        "share_of_oracle_area": area / oracle_area if oracle_area > 0 else None,
        "min_gap_to_hull_points": float(np.nanmin(gap) * 100) if np.isfinite(gap).any() else None,
        "share_of_range_on_or_above_hull": float(np.mean(np.nan_to_num(gap, nan=-1) >= -1e-3)),
        "cost_to_match_best_per_1k": float(match) if match is not None else None,
        "cost_to_match_best_share": float(match / best_cost) if match is not None else None,
        "accuracy_at_cheapest_cost": float(at_cheapest) if np.isfinite(at_cheapest) else None,
        "max_accuracy": float(py.max()) if len(py) else None,
    }


# --------------------------------------------------------------------------------------
# routers, cross-fit by prompt
# --------------------------------------------------------------------------------------
def _labels(data: TaskData, rows: np.ndarray) -> pd.DataFrame:
    ids = data.prompt_ids[rows]
    n, m = len(ids), len(data.pool)
    return pd.DataFrame({
        "prompt_id": np.repeat(ids, m),
        "prompt": np.repeat(np.asarray(data.prompts, dtype=object)[rows], m),
        "model": np.tile(np.asarray(data.pool, dtype=object), n),
        "quality": data.correct[rows].astype(float).ravel(),
        "output_tokens": data.frame("output_tokens").to_numpy(float)[rows].ravel(),
        "input_tokens": np.repeat(data.input_tokens[rows], m),
    })


def _fit(kind: str, data: TaskData, rows: np.ndarray, embedder, params: dict | None):
    from router_tasks.routers import EmbeddingRouter, make_router

    acc = data.correct[rows].mean(axis=0)
    strong, weak = data.pool[int(np.argmax(acc))], data.pool[int(np.argmin(acc))]
    router = make_router(kind, data.pool, strong, weak, params)
    if isinstance(router, EmbeddingRouter) and embedder is not None:
        router.embedder = embedder
    labels = _labels(data, rows)
    router.fit(labels)
    router.fit_costs(labels)
    return router


def _predict(router, data: TaskData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prompts = [data.prompts[i] for i in np.flatnonzero(rows)]
    q = router.predict_quality(prompts)[data.pool].to_numpy(float)
    c = router.predict_cost(prompts, data.prices, models=data.pool).to_numpy(float)
    return q, c


def crossfit_router(kind: str, data: TaskData, *, embedder=None, params: dict | None = None,
                    nested: bool = False) -> dict:
    """Held-out predictions of a `kind` router: {"quality", "cost"} (n, m) stitched over
    the folds and, with `nested`, "nested_quality": {k: (n, m)} (fold k from the outer
    router, every other fold from an inner router that saw neither it nor fold k)."""
    n, m = data.n, len(data.pool)
    q, c = np.zeros((n, m)), np.zeros((n, m))
    nested_q: dict[int, np.ndarray] = {}
    nested_c: dict[int, np.ndarray] = {}
    for k in np.unique(data.folds):
        test = data.folds == k
        router = _fit(kind, data, ~test, embedder, params)
        q[test], c[test] = _predict(router, data, test)
        if nested:
            qk, ck = np.zeros((n, m)), np.zeros((n, m))
            qk[test], ck[test] = q[test], c[test]
            for j in np.unique(data.folds):
                if j == k:
                    continue
                inner = data.folds == j
                qk[inner], ck[inner] = _predict(_fit(kind, data, ~test & ~inner, embedder, params), data, inner)
            nested_q[int(k)], nested_c[int(k)] = qk, ck
    out = {"quality": q, "cost": c}
    if nested:
        out["nested_quality"], out["nested_cost"] = nested_q, nested_c
    return out


def other_task(task: str) -> str:
    """The bundled task a leave-task-out router trains on when it is scored on `task`."""
    task = ze.BENCHMARKS.get(task, task)
    others = [t for t in ze.BENCHMARKS.values() if t != task]
    if len(others) != 1:
        raise ValueError(f"leave-task-out needs exactly one other bundled task than {task!r}; have {others}")
    return others[0]


def transfer_pool(task: str, train_task: str, pool: Sequence[str] | None) -> list[str]:
    """The pool for scoring `task` with routers trained on `train_task`: the given one
    (every model must have replies in both), or `task`'s default pool less the models
    `train_task` has no replies from."""
    both = set(ze.results(train_task)["model"]) & set(ze.results(task)["model"])
    if pool is not None:
        missing = [m for m in pool if m not in both]
        if missing:
            raise ValueError(f"leave-task-out on {task!r}: pool model(s) {missing} have no replies in both "
                             f"{task!r} and {train_task!r} (a router can only learn a model it has labels for)")
        return list(pool)
    return [m for m in ze.POOLS[task] if m in both]


def transfer_router(kind: str, train: TaskData, data: TaskData, *, embedder=None,
                    params: dict | None = None) -> dict:
    """Predictions on every prompt of `data` by a `kind` router fitted on every prompt of
    `train` (another task, the same pool): {"quality", "cost"} (n, m)."""
    if train.pool != data.pool:
        raise ValueError(f"transfer: the pools differ ({train.pool} vs {data.pool})")
    router = _fit(kind, train, np.ones(train.n, dtype=bool), embedder, params)
    q, c = _predict(router, data, np.ones(data.n, dtype=bool))
    return {"quality": q, "cost": c}


#: shrinkage of predicted quality toward each model's training mean, chosen per outer fold
#: on inner cross-fit predictions (1 = the router as is; 0 = every prompt alike, so the
#: policy mixes the hull's models, spending where the predicted cost is lowest)
SHRINK_GRID = (0.0, 0.1, 0.3, 0.6, 1.0)


#: cost the policy sees: the router's per-prompt prediction, or its mean per model over the
#: prompts being routed (the ranking then follows predicted quality alone)
COST_MODES = ("predicted", "mean")


def _mean_cost(c: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = c.copy()
    out[rows] = c[rows].mean(axis=0, keepdims=True)
    return out


def _shrunk(q: np.ndarray, mean: np.ndarray, alpha: float) -> np.ndarray:
    return mean[None, :] + float(alpha) * (q - mean[None, :])


def _frontier_outcome(data: TaskData, rows: np.ndarray, q: np.ndarray, c: np.ndarray, b: float,
                      pool: Sequence[str] | None = None):
    from router_tasks.routing.choice import route_frontier

    dec = route_frontier(pd.DataFrame(q[rows], columns=data.pool), pd.DataFrame(c[rows], columns=data.pool),
                         budget_per_prompt=float(b), pool=pool)
    idx = np.array([data.pool.index(x) for x in dec.choice])
    r = np.flatnonzero(rows)
    return idx, data.correct[r, idx], data.cost[r, idx], dec


def one_call_nested_curve(data: TaskData, preds: dict, budgets: Sequence[float], policy: str,
                          shrink_grid: Sequence[float] = SHRINK_GRID) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frontier policy with its shrinkage chosen per outer fold on inner cross-fit
    predictions of the training folds (the area over their own zero-router hull), then
    applied to the held-out fold, whose budget is met by bisection on predicted cost."""
    n = data.n
    nb = len(budgets)
    ok_all = np.zeros((nb, n), dtype=bool)
    cost_all = np.zeros((nb, n))
    chosen_idx = np.zeros((nb, n), dtype=np.int64)
    settings: dict[int, list] = {i: [] for i in range(nb)}
    fold_alpha = {}
    for k in np.unique(data.folds):
        test = data.folds == k
        train = ~test
        mean = data.correct[train].mean(axis=0).astype(float)
        qi, ci = preds["nested_quality"][int(k)], preds["nested_cost"][int(k)]
        tr_cost = 1000 * data.cost[train].mean(axis=0)
        tr_acc = data.correct[train].mean(axis=0)
        hull = upper_hull(tr_cost, tr_acc)
        oracle = oracle_points(data.correct[train], data.cost[train])
        oracle = (oracle[0] * 1000, oracle[1])
        grid = np.geomspace(tr_cost.min(), tr_cost.max(), 200)
        # candidate pools: all models, or only those on the training folds' hull
        hull_pool = [m for j, m in enumerate(data.pool)
                     if (np.isclose(tr_cost[j], hull[0]) & np.isclose(tr_acc[j], hull[1])).any()]
        pools = {"all": list(data.pool), "hull": hull_pool}
        best_area, best = -np.inf, ("all", 1.0, "predicted")
        for pool_name, pool in pools.items():
            for cost_mode in COST_MODES:
                cc = ci if cost_mode == "predicted" else _mean_cost(ci, train)
                for alpha in shrink_grid:
                    qa = _shrunk(qi, mean, alpha)
                    px, py = [], []
                    for b in budgets:
                        _, ok, c, _ = _frontier_outcome(data, train, qa, cc, b, pool)
                        px.append(1000 * c.mean())
                        py.append(ok.mean())
                    area = curve_metrics(px, py, hull=hull, oracle=oracle, grid=grid, best=(1.0, 1.0),
                                         cheapest_cost=float(tr_cost.min()))["area_vs_hull"]
                    if area > best_area + 1e-12:
                        best_area, best = area, (pool_name, float(alpha), cost_mode)
        pool_name, alpha, cost_mode = best
        fold_alpha[int(k)] = (*best, round(best_area, 4))
        qa = _shrunk(preds["quality"], mean, alpha)
        cc = preds["cost"] if cost_mode == "predicted" else _mean_cost(preds["cost"], test)
        for i, b in enumerate(budgets):
            idx, ok, c, dec = _frontier_outcome(data, test, qa, cc, b, pools[pool_name])
            ok_all[i, test], cost_all[i, test], chosen_idx[i, test] = ok, c, idx
            settings[i].append(f"pool={pool_name},alpha={alpha:g},cost={cost_mode},lambda={dec.lam:.4g}")
    rows, decisions = [], []
    names = np.asarray(data.pool, dtype=object)
    for i, b in enumerate(budgets):
        rows.append({"policy": policy, "budget_per_1k": 1000 * b, "cost_per_1k": 1000 * cost_all[i].mean(),
                     "accuracy": ok_all[i].mean(), "settings": " | ".join(settings[i])})
        setting = np.array(settings[i], dtype=object)[data.folds]
        decisions.append(pd.DataFrame({"prompt_index": np.arange(n), "fold": data.folds, "budget_per_1k": 1000 * b,
                                       "setting": setting, "models_called": names[chosen_idx[i]],
                                       "answered_by": names[chosen_idx[i]], "correct": ok_all[i], "cost": cost_all[i]}))
    log.info("%s %s: shrinkage per fold %s", data.task, policy, fold_alpha)
    return pd.DataFrame(rows), pd.concat(decisions, ignore_index=True).assign(policy=policy)


def one_call_curve(data: TaskData, quality: np.ndarray, cost_pred: np.ndarray, budgets: Sequence[float],
                   policy: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frontier policy at each budget (bisection on predicted cost), realised outcome."""
    from router_tasks.routing.choice import route_frontier

    qf = pd.DataFrame(quality, columns=data.pool)
    cf = pd.DataFrame(cost_pred, columns=data.pool)
    rows, decisions = [], []
    r = np.arange(data.n)
    for b in budgets:
        dec = route_frontier(qf, cf, budget_per_prompt=float(b))
        idx = np.array([data.pool.index(x) for x in dec.choice])
        ok, c = data.correct[r, idx], data.cost[r, idx]
        rows.append({"policy": policy, "budget_per_1k": 1000 * b, "cost_per_1k": 1000 * c.mean(),
                     "accuracy": ok.mean(), "predicted_cost_per_1k": 1000 * dec.mean_cost, "lambda": dec.lam,
                     "settings": f"lambda={dec.lam:.4g}"})
        names = np.asarray(data.pool, dtype=object)[idx]
        decisions.append(pd.DataFrame({"prompt_index": r, "fold": data.folds, "budget_per_1k": 1000 * b,
                                       "setting": f"lambda={dec.lam:.4g}", "models_called": names,
                                       "answered_by": names, "correct": ok, "cost": c}))
    return pd.DataFrame(rows), pd.concat(decisions, ignore_index=True).assign(policy=policy)


# --------------------------------------------------------------------------------------
# cascades
# --------------------------------------------------------------------------------------
def cascade_sets(data: TaskData, train: np.ndarray, n_cheap: int = N_CHEAP, n_final: int = 4) -> tuple[list, list]:
    """(cheap, finals) pool indices for cascades, chosen on the training prompts only:
    cheap = for each share s in CHEAP_SHARES, the most accurate models costing <= s of the
    most accurate model's cost (`n_cheap` for the first share, one fewer for each next),
    most accurate first; finals = the `n_final` most accurate models plus the zero-router
    hull's vertices above the cheap ones (all on training prompts)."""
    acc = data.correct[train].mean(axis=0)
    cost = data.cost[train].mean(axis=0)
    top = int(np.lexsort((cost, -acc))[0])
    cheap: list[int] = []
    for i, share in enumerate(CHEAP_SHARES):
        ok = np.flatnonzero(cost <= share * cost[top])
        cheap += [int(j) for j in ok[np.lexsort((cost[ok], -acc[ok]))][: max(1, n_cheap - i)] if int(j) != top]
    cheap = sorted(dict.fromkeys(cheap), key=lambda j: (-acc[j], cost[j]))
    hx, _ = upper_hull(cost, acc)
    on_hull = [int(j) for j in range(len(cost)) if np.isclose(cost[j], hx).any() and j not in cheap]
    ranked = [int(j) for j in np.lexsort((cost, -acc)) if j not in cheap]
    finals = list(dict.fromkeys(ranked[:n_final] + [j for j in on_hull if cost[j] > max(cost[cheap])]))
    return cheap, finals


def cascade_curves(data: TaskData, budgets: Sequence[float], confidence: dict | None) -> tuple[list, list]:
    """Nested-selected curves of each cascade family and of all families together."""
    feats: dict = {}
    ver_cache: dict = {}

    def verifier_scores(key) -> dict:
        if key not in ver_cache:
            for j in key:
                if j not in feats:
                    feats[j] = cz.reply_features(data.task, data.frame, data.pool[j], data.input_tokens)
            if len(key) == 1:
                x = feats[key[0]]
            else:
                a, b = key
                agree = np.array([u is not None and u == v for u, v in zip(data.answers[:, a], data.answers[:, b])],
                                 float)
                x = np.column_stack([feats[a], feats[b], agree])
            ver_cache[key] = cz.nested_scores(x, data.correct[:, key[0]], data.folds)
        return ver_cache[key]

    sets = {int(k): cascade_sets(data, data.folds != k) for k in np.unique(data.folds)}

    def agreement_for(k: int):
        cheap, finals = sets[k]
        return cz.agreement_candidates(data.pool, data.answers, data.correct, data.cost, cheap, finals)

    def verifier_for(k: int):
        cheap, finals = sets[k]
        out = []
        for a in cheap:
            for f in finals:
                out += cz.threshold_candidates("verifier", data.pool, verifier_scores((a,))[k], [a], f, data.correct,
                                               data.cost, first_always=True)
        return out

    def verifier2_for(k: int):
        cheap, finals = sets[k]
        out = []
        for a, b in itertools.combinations(cheap, 2):  # cheap is ordered best first: a's answer is returned
            for f in finals:
                out += cz.threshold_candidates("verifier2", data.pool, verifier_scores((a, b))[k], [a, b], f,
                                               data.correct, data.cost, first_always=True)
        return out

    def confidence_for(k: int):
        out = []
        if confidence is None:
            return out
        cheap, finals = sets[k]
        q = confidence["nested_quality"][k]
        for a in cheap:
            for f in finals:
                out += cz.threshold_candidates("confidence", data.pool, q[:, a], [a], f, data.correct, data.cost,
                                               first_always=False)
        return out

    def agreement_router_for(k: int):
        if confidence is None:
            return []
        cheap, finals = sets[k]
        finals = sorted(finals)
        return cz.agreement_router_candidates(data.pool, data.answers, data.correct, data.cost, cheap, finals,
                                              confidence["nested_quality"][k], confidence["nested_cost"][k],
                                              ROUTER_LAMBDAS)

    families = {
        "cascade-agreement": agreement_for,
        "cascade-verifier": verifier_for,
        "cascade-verifier+agreement": verifier2_for,
    }
    if confidence is not None:
        families["cascade-confidence"] = confidence_for
        families["cascade-agreement+router"] = agreement_router_for
    families["cascade-any"] = lambda k: (agreement_for(k) + verifier_for(k) + verifier2_for(k) + confidence_for(k)
                                         + agreement_router_for(k))
    curves, decisions = [], []
    for name, fn in families.items():
        t0 = time.time()
        curve, dec = cz.nested_curve(fn, data.folds, budgets)
        curves.append(curve.assign(policy=name))
        decisions.append(dec.assign(policy=name))
        log.info("%s %s: %.1f s", data.task, name, time.time() - t0)
    return curves, decisions


# --------------------------------------------------------------------------------------
# the whole evaluation
# --------------------------------------------------------------------------------------
def evaluate_many(task: str, pool: Sequence[str] | None = None, *, router_kinds: Sequence[str] = DEFAULT_ROUTER_KINDS,
                  folds: int = 5, prices: dict | None = None, cascades: bool = True, artifact_root: str | None = None,
                  router_params: dict | None = None, seed: int = 0, protocol: str = CROSSFIT) -> dict:
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
    singles = pd.DataFrame({"model": data.pool, "cost_per_1k": 1000 * data.cost.mean(axis=0),
                            "accuracy": data.correct.mean(axis=0)})
    hull = upper_hull(singles["cost_per_1k"], singles["accuracy"])
    oracle = oracle_points(data.correct, data.cost)
    oracle = (oracle[0] * 1000, oracle[1])
    lo, hi = float(singles["cost_per_1k"].min()), float(singles["cost_per_1k"].max())
    grid = np.geomspace(lo, hi, 400)
    best_row = singles.sort_values(["accuracy", "cost_per_1k"], ascending=[False, True]).iloc[0]
    best = (float(best_row["accuracy"]), float(best_row["cost_per_1k"]))
    # a log grid plus every single model's cost: the hull's kinks are where curves are read
    budgets = np.unique(np.concatenate([np.geomspace(lo * 0.6, hi * 1.05, N_BUDGETS),
                                        singles["cost_per_1k"].to_numpy()])) / 1000.0

    embedder = None
    if any(k != "random" for k in router_kinds):
        from router_tasks.routers.embeddings import Embedder

        if artifact_root is not None:
            from router_tasks.core.store import ArtifactStore

            embedder = Embedder(ArtifactStore(artifact_root))
        else:
            embedder = Embedder()
    curves, decisions, preds = [], [], {}
    for kind in router_kinds:
        t0 = time.time()
        if train is not None:  # trained on the other task: no fold of this one to choose settings on
            preds[kind] = transfer_router(kind, train, data, embedder=embedder, params=(router_params or {}).get(kind))
            curve, dec = one_call_curve(data, preds[kind]["quality"], preds[kind]["cost"], budgets, f"router-{kind}")
            curves.append(curve)
            decisions.append(dec)
            log.info("%s %s router trained on %s (%d prompts) in %.1f s", data.task, kind, train.task, train.n,
                     time.time() - t0)
            continue
        preds[kind] = crossfit_router(kind, data, embedder=embedder, params=(router_params or {}).get(kind),
                                      nested=True)
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
        metrics[policy] = curve_metrics(g["cost_per_1k"], g["accuracy"], hull=hull, oracle=oracle, grid=grid,
                                        best=best, cheapest_cost=lo)
    metrics["oracle"] = curve_metrics(oracle[0], oracle[1], hull=hull, oracle=oracle, grid=grid, best=best,
                                      cheapest_cost=lo)
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


def metrics_table(result: dict) -> pd.DataFrame:
    rows = []
    for policy, m in result["metrics"].items():
        rows.append({
            "policy": policy,
            "share of oracle area": m["share_of_oracle_area"],
            "worst gap to hull (pt)": m["min_gap_to_hull_points"],
            "range on/above hull": m["share_of_range_on_or_above_hull"],
            "cost to match best (share)": m["cost_to_match_best_share"],
            "acc at cheapest cost": m["accuracy_at_cheapest_cost"],
            "max acc": m["max_accuracy"],
        })
    return pd.DataFrame(rows)


def render_markdown(result: dict) -> str:
    b, c = result["best_single"], result["cheapest_single"]
    how = (f"{result['folds']}-fold cross-fit by prompt" if result["protocol"] == CROSSFIT else
           f"leave-task-out: routers trained on all {result['trained_on']['prompts']} prompts of "
           f"{result['trained_on']['task']!r}, none of this task")
    lines = [
        f"# {result['benchmark']}: {len(result['pool'])} models, {result['prompts']} prompts, {how}",
        "",
        f"Best single model: {b['model']} {100 * b['accuracy']:.2f}% at ${b['cost_per_1k']:.3f}/1k prompts; "
        f"cheapest: {c['model']} at ${c['cost_per_1k']:.4f}/1k. Oracle area over the hull = 1.",
        "",
        "| model | $/1k prompts | accuracy % |",
        "|---|---:|---:|",
    ]
    for s in sorted(result["single_models"], key=lambda s: s["cost_per_1k"]):
        lines.append(f"| {s['model']} | {s['cost_per_1k']:.4f} | {100 * s['accuracy']:.2f} |")
    lines += ["", "| policy | share of oracle area | worst gap to hull (pt) | range on/above hull | "
              "cost to match best (share of its cost) | acc at cheapest cost % | max acc % |",
              "|---|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)

    for _, r in metrics_table(result).iterrows():
        lines.append(
            f"| {r['policy']} | {f(r['share of oracle area'], '.3f')} | {f(r['worst gap to hull (pt)'], '.2f')} | "
            f"{f(r['range on/above hull'], '.2f')} | {f(r['cost to match best (share)'], '.3f')} | "
            f"{f(None if r['acc at cheapest cost'] is None else 100 * r['acc at cheapest cost'], '.2f')} | "
            f"{f(None if r['max acc'] is None else 100 * r['max acc'], '.2f')} |")
    return "\n".join(lines) + "\n"


def plot_png(result: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    one_call = "one call per prompt" if result["protocol"] == CROSSFIT else \
        f"one call per prompt, routers trained on {result['trained_on']['task']!r} only"
    panels = [(one_call, [p for p in curve["policy"].unique() if p.startswith("router-")]),
              ("cascades", [p for p in curve["policy"].unique() if p.startswith("cascade-")])]
    panels = [panels[0]] + [pn for pn in panels[1:] if pn[1]]  # no empty cascades panel
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (title, policies) in zip(axes, panels):
        for s in result["single_models"]:
            ax.scatter(s["cost_per_1k"], 100 * s["accuracy"], color="black", s=18, zorder=3)
            ax.annotate(s["model"].split("/")[-1][:22], (s["cost_per_1k"], 100 * s["accuracy"]), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
        ax.plot(result["hull"]["cost_per_1k"], 100 * np.array(result["hull"]["accuracy"]), "k--", label="zero router (hull)")
        ax.plot(result["oracle"]["cost_per_1k"], 100 * np.array(result["oracle"]["accuracy"]), ":", color="gray", label="oracle")
        ax.scatter(result["random"]["cost_per_1k"], 100 * result["random"]["accuracy"], marker="x", color="red",
                   label="random", zorder=4)
        for p in policies:
            g = curve[curve["policy"] == p].sort_values("cost_per_1k")
            ax.plot(g["cost_per_1k"], 100 * g["accuracy"], marker="o", ms=3, label=p)
        ax.set_xscale("log")
        ax.set_xlabel("$ per 1k prompts (log)")
        ax.set_title(f"{result['benchmark']}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        lo = min(100 * s["accuracy"] for s in result["single_models"])
        ax.set_ylim(max(lo - 2, 0), 100.5)
    axes[0].set_ylabel("accuracy %")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def evaluate_to_dir(benchmark: str, output: str, *, pool: Sequence[str] | None = None, protocol: str | None = "crossfit",
                    folds: int = 5, router_kinds: Sequence[str] = DEFAULT_ROUTER_KINDS, prices=None,
                    cascades: bool = True, artifact_root: str | None = None) -> dict:
    """Run `evaluate_many` and write metrics.json, metrics.md, curve.csv, plot.png and
    decisions.parquet into the local folder `output`."""
    protocol = protocol or CROSSFIT
    if protocol not in PROTOCOLS:
        raise ValueError(f"{benchmark}: many-model protocols are {list(PROTOCOLS)} (leave-group-out: trained on "
                         f"the other task), got {protocol!r}")
    if benchmark not in ze.BENCHMARKS:
        raise ValueError(f"unknown many-model benchmark {benchmark!r}; known: {sorted(ze.BENCHMARKS)}")
    result = evaluate_many(benchmark, pool, router_kinds=router_kinds, folds=folds, prices=prices,
                           cascades=cascades, artifact_root=artifact_root, protocol=protocol)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics.json": json.dumps({k: v for k, v in result.items() if k not in ("curve", "decisions")}, indent=2,
                                   default=float).encode(),
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
