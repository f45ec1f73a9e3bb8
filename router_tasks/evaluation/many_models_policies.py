"""The curves of every routing policy of the many-model evaluation, measured on held-out
prompts: one call per prompt by a router (trained per fold by prompt, `crossfit_router`, or
on the other task, `transfer_router`) under the frontier policy at each budget
(`one_call_curve`, and `one_call_nested_curve` with its settings chosen on the training
folds), and the cascades (`cascade_curves`: answer agreement, a verifier over the replies,
the router's confidence; `evaluation.cascades` holds their maths)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.evaluation import cascades as cz
from router_tasks.evaluation.many_models_curves import curve_metrics, oracle_points, upper_hull
from router_tasks.evaluation.many_models_data import TaskData
from router_tasks.routers import EmbeddingRouter, make_router
from router_tasks.routing.choice import route_frontier

log = logging.getLogger(__name__)

#: cascades call first the most accurate models (on training prompts) that cost at most
#: each of CHEAP_SHARES of the most accurate model (N_CHEAP for the first share)
N_CHEAP = 4
CHEAP_SHARES = (0.1, 0.25)
#: lambdas ($^-1) the router may use to pick the last-resort model of an agreement cascade
ROUTER_LAMBDAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)


def _labels(data: TaskData, rows: np.ndarray) -> pd.DataFrame:
    ids = data.prompt_ids[rows]
    n, m = len(ids), len(data.pool)
    return pd.DataFrame(
        {
            "prompt_id": np.repeat(ids, m),
            "prompt": np.repeat(np.asarray(data.prompts, dtype=object)[rows], m),
            "model": np.tile(np.asarray(data.pool, dtype=object), n),
            "quality": data.correct[rows].astype(float).ravel(),
            "output_tokens": data.frame("output_tokens").to_numpy(float)[rows].ravel(),
            "input_tokens": np.repeat(data.input_tokens[rows], m),
        }
    )


def _fit(kind: str, data: TaskData, rows: np.ndarray, embedder, params: dict | None):
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


def crossfit_router(
    kind: str, data: TaskData, *, embedder=None, params: dict | None = None, nested: bool = False
) -> dict:
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


def transfer_router(kind: str, train: TaskData, data: TaskData, *, embedder=None, params: dict | None = None) -> dict:
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


def _frontier_outcome(
    data: TaskData, rows: np.ndarray, q: np.ndarray, c: np.ndarray, b: float, pool: Sequence[str] | None = None
):
    dec = route_frontier(
        pd.DataFrame(q[rows], columns=data.pool),
        pd.DataFrame(c[rows], columns=data.pool),
        budget_per_prompt=float(b),
        pool=pool,
    )
    idx = np.array([data.pool.index(x) for x in dec.choice])
    r = np.flatnonzero(rows)
    return idx, data.correct[r, idx], data.cost[r, idx], dec


def one_call_nested_curve(
    data: TaskData, preds: dict, budgets: Sequence[float], policy: str, shrink_grid: Sequence[float] = SHRINK_GRID
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
        hull_pool = [
            m
            for j, m in enumerate(data.pool)
            if (np.isclose(tr_cost[j], hull[0]) & np.isclose(tr_acc[j], hull[1])).any()
        ]
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
                    area = curve_metrics(
                        px, py, hull=hull, oracle=oracle, grid=grid, best=(1.0, 1.0), cheapest_cost=float(tr_cost.min())
                    )["area_vs_hull"]
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
        rows.append(
            {
                "policy": policy,
                "budget_per_1k": 1000 * b,
                "cost_per_1k": 1000 * cost_all[i].mean(),
                "accuracy": ok_all[i].mean(),
                "settings": " | ".join(settings[i]),
            }
        )
        setting = np.array(settings[i], dtype=object)[data.folds]
        decisions.append(
            pd.DataFrame(
                {
                    "prompt_index": np.arange(n),
                    "fold": data.folds,
                    "budget_per_1k": 1000 * b,
                    "setting": setting,
                    "models_called": names[chosen_idx[i]],
                    "answered_by": names[chosen_idx[i]],
                    "correct": ok_all[i],
                    "cost": cost_all[i],
                }
            )
        )
    log.info("%s %s: shrinkage per fold %s", data.task, policy, fold_alpha)
    return pd.DataFrame(rows), pd.concat(decisions, ignore_index=True).assign(policy=policy)


def one_call_curve(
    data: TaskData, quality: np.ndarray, cost_pred: np.ndarray, budgets: Sequence[float], policy: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frontier policy at each budget (bisection on predicted cost), realised outcome."""
    qf = pd.DataFrame(quality, columns=data.pool)
    cf = pd.DataFrame(cost_pred, columns=data.pool)
    rows, decisions = [], []
    r = np.arange(data.n)
    for b in budgets:
        dec = route_frontier(qf, cf, budget_per_prompt=float(b))
        idx = np.array([data.pool.index(x) for x in dec.choice])
        ok, c = data.correct[r, idx], data.cost[r, idx]
        rows.append(
            {
                "policy": policy,
                "budget_per_1k": 1000 * b,
                "cost_per_1k": 1000 * c.mean(),
                "accuracy": ok.mean(),
                "predicted_cost_per_1k": 1000 * dec.mean_cost,
                "lambda": dec.lam,
                "settings": f"lambda={dec.lam:.4g}",
            }
        )
        names = np.asarray(data.pool, dtype=object)[idx]
        decisions.append(
            pd.DataFrame(
                {
                    "prompt_index": r,
                    "fold": data.folds,
                    "budget_per_1k": 1000 * b,
                    "setting": f"lambda={dec.lam:.4g}",
                    "models_called": names,
                    "answered_by": names,
                    "correct": ok,
                    "cost": c,
                }
            )
        )
    return pd.DataFrame(rows), pd.concat(decisions, ignore_index=True).assign(policy=policy)


# cascades
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
                agree = np.array(
                    [u is not None and u == v for u, v in zip(data.answers[:, a], data.answers[:, b], strict=False)],
                    float,
                )
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
                out += cz.threshold_candidates(
                    "verifier", data.pool, verifier_scores((a,))[k], [a], f, data.correct, data.cost, first_always=True
                )
        return out

    def verifier2_for(k: int):
        cheap, finals = sets[k]
        out = []
        for a, b in itertools.combinations(cheap, 2):  # cheap is ordered best first: a's answer is returned
            for f in finals:
                out += cz.threshold_candidates(
                    "verifier2",
                    data.pool,
                    verifier_scores((a, b))[k],
                    [a, b],
                    f,
                    data.correct,
                    data.cost,
                    first_always=True,
                )
        return out

    def confidence_for(k: int):
        out = []
        if confidence is None:
            return out
        cheap, finals = sets[k]
        q = confidence["nested_quality"][k]
        for a in cheap:
            for f in finals:
                out += cz.threshold_candidates(
                    "confidence", data.pool, q[:, a], [a], f, data.correct, data.cost, first_always=False
                )
        return out

    def agreement_router_for(k: int):
        if confidence is None:
            return []
        cheap, finals = sets[k]
        finals = sorted(finals)
        return cz.agreement_router_candidates(
            data.pool,
            data.answers,
            data.correct,
            data.cost,
            cheap,
            finals,
            confidence["nested_quality"][k],
            confidence["nested_cost"][k],
            ROUTER_LAMBDAS,
        )

    families = {
        "cascade-agreement": agreement_for,
        "cascade-verifier": verifier_for,
        "cascade-verifier+agreement": verifier2_for,
    }
    if confidence is not None:
        families["cascade-confidence"] = confidence_for
        families["cascade-agreement+router"] = agreement_router_for
    families["cascade-any"] = lambda k: (
        agreement_for(k) + verifier_for(k) + verifier2_for(k) + confidence_for(k) + agreement_router_for(k)
    )
    curves, decisions = [], []
    for name, fn in families.items():
        t0 = time.time()
        curve, dec = cz.nested_curve(fn, data.folds, budgets)
        curves.append(curve.assign(policy=name))
        decisions.append(dec.assign(policy=name))
        log.info("%s %s: %.1f s", data.task, name, time.time() - t0)
    return curves, decisions
