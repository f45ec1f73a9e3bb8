"""Routing policies: turn a router's predictions into a choice of model.

A router predicts, per prompt, every model's quality in [0, 1] (`Router.predict_quality`)
and, for a strong/weak pair, a strong-win rate (`Router.strong_win_rate`). A policy
decides; keeping the two apart means one trained router serves any threshold, target or
budget without retraining.

Prices are per-model costs from config, in any one unit for all models: dollars per 1M
tokens or per call. Given `tokens_per_prompt` (a number, or one per prompt), prices are
read as $ per 1M tokens and turned into dollars per prompt; without it they are read as
the cost of one call. Policies only compare costs, so the unit matters only for
`best_under_budget`, whose budget must be in the same unit as the per-prompt cost.

Many models: `route_frontier` takes per-prompt predicted quality *and* predicted cost
(`Router.predict_cost`, dollars) and chooses argmax_m (quality_m - lambda * cost_m) per
prompt, lambda set by bisection to meet a mean-quality target, a budget ($ per prompt or
per 1k prompts) or a share of calls to a named model; `pool` routes among any subset of
the models without retraining. `best_under_budget` is that policy with a mean budget.
Cascades (several calls, answer-checked) are in `routing.cascade`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def route_two(strong_win_rate, threshold: float) -> np.ndarray:
    """RouteLLM's rule: True (send to the strong model) where strong_win_rate >= threshold."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    win = np.asarray(strong_win_rate, dtype=np.float64)
    if np.isnan(win).any():
        raise ValueError(f"strong_win_rate has NaN at position {int(np.flatnonzero(np.isnan(win))[0])}")
    return win >= float(threshold)


def _checked(quality: pd.DataFrame, prices: Mapping[str, float]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(quality matrix, models, price per model), with errors naming model and row."""
    if not isinstance(quality, pd.DataFrame):
        raise TypeError(f"quality must be a DataFrame with one column per model, got {type(quality).__name__}")
    models = [str(c) for c in quality.columns]
    if not models:
        raise ValueError("quality has no model columns")
    missing = [m for m in models if m not in prices]
    if missing:
        raise ValueError(f"no price for model(s) {missing}; prices given for {sorted(prices)}")
    price = np.array([float(prices[m]) for m in models])
    bad = [m for m, p in zip(models, price, strict=False) if not np.isfinite(p) or p < 0]
    if bad:
        raise ValueError(f"price of {bad} must be a finite number >= 0")
    q = quality.to_numpy(dtype=np.float64)
    if np.isnan(q).any():
        row, col = np.argwhere(np.isnan(q))[0]
        raise ValueError(f"quality row {quality.index[row]!r}, model {models[col]!r} is NaN")
    return q, models, price


def _cost_per_prompt(price: np.ndarray, n: int, tokens_per_prompt) -> np.ndarray:
    """(n, n_models) cost of sending each prompt to each model."""
    if tokens_per_prompt is None:
        return np.broadcast_to(price, (n, len(price)))
    tokens = np.broadcast_to(np.asarray(tokens_per_prompt, dtype=np.float64), (n,))
    if (tokens < 0).any():
        raise ValueError("tokens_per_prompt must be >= 0")
    return tokens[:, None] * price[None, :] / 1e6


def cheapest_adequate(
    quality: pd.DataFrame,
    prices: Mapping[str, float],
    target: float,
    *,
    tokens_per_prompt: float | Sequence[float] | None = None,
) -> pd.Series:
    """Per prompt, the cheapest model whose predicted quality is >= `target`.

    Where no model clears the target, the model with the best predicted quality (the
    cheaper one on a tie). Ties in cost among adequate models go to the higher quality.
    Returns model names indexed like `quality`.
    """
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"target quality must be in [0, 1], got {target}")
    q, models, price = _checked(quality, prices)
    cost = _cost_per_prompt(price, len(q), tokens_per_prompt)
    choice = np.empty(len(q), dtype=np.int64)
    for i in range(len(q)):
        ok = np.flatnonzero(q[i] >= float(target))
        if len(ok):
            # lexsort: last key is primary -> cheapest, then highest quality
            choice[i] = ok[np.lexsort((-q[i, ok], cost[i, ok]))[0]]
        else:
            every = np.arange(len(models))
            choice[i] = every[np.lexsort((cost[i], -q[i]))[0]]
    return pd.Series(np.asarray(models, dtype=object)[choice], index=quality.index, name="model")


def best_under_budget(
    quality: pd.DataFrame,
    prices: Mapping[str, float],
    budget_per_prompt: float,
    *,
    tokens_per_prompt: float | Sequence[float] | None = None,
) -> pd.Series:
    """The best predicted quality whose *mean* cost per prompt stays within the budget.

    The frontier policy (`route_frontier`): per prompt argmax_m (quality_m - lambda *
    cost_m), with lambda the smallest value whose mean cost is <= `budget_per_prompt`
    (bisection). So spending goes where the predicted quality gain per extra dollar is
    largest, and a huge budget buys the best predicted model everywhere. Where even the
    cheapest model for every prompt is over budget, that is the choice. Costs are the
    per-call prices, or $ per 1M tokens x `tokens_per_prompt`. Returns model names
    indexed like `quality`.
    """
    if not float(budget_per_prompt) >= 0:
        raise ValueError(f"budget_per_prompt must be >= 0, got {budget_per_prompt}")
    q, models, price = _checked(quality, prices)
    cost = np.array(_cost_per_prompt(price, len(q), tokens_per_prompt))
    return route_frontier(
        quality, pd.DataFrame(cost, index=quality.index, columns=models), budget_per_prompt=float(budget_per_prompt)
    ).choice


# --------------------------------------------------------------------------------------
# the quality-cost frontier: argmax_m (quality_m - lambda * cost_m), lambda by bisection
# --------------------------------------------------------------------------------------
@dataclass
class FrontierRoute:
    """A frontier routing decision: the chosen model per prompt and how lambda was set."""

    choice: pd.Series  # model name per prompt, indexed like the quality table
    lam: float  # the lambda used ($^-1: quality points given up per dollar)
    mean_quality: float  # mean predicted quality of the choice
    mean_cost: float  # mean predicted cost per prompt of the choice
    share: dict  # share of prompts per model
    target: dict  # what was asked for
    met: bool  # whether the target was met (False: the closest feasible end)

    def to_dict(self) -> dict:
        return {
            "lambda": self.lam,
            "mean_quality": self.mean_quality,
            "mean_cost": self.mean_cost,
            "share": self.share,
            "target": self.target,
            "met": self.met,
        }


def frontier_choice(quality: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Column index per row of argmax (quality - lam * cost); ties go to the cheaper model."""
    value = quality - float(lam) * cost
    best = value.max(axis=1, keepdims=True)
    # among the (near-)ties, the cheapest
    tied = value >= best - 1e-12
    return np.where(tied, cost, np.inf).argmin(axis=1)


def _frontier_inputs(quality: pd.DataFrame, cost: pd.DataFrame, pool: Sequence[str] | None):
    if not isinstance(quality, pd.DataFrame) or not isinstance(cost, pd.DataFrame):
        raise TypeError("quality and cost must be DataFrames with one column per model")
    models = [str(m) for m in (pool if pool is not None else quality.columns)]
    if not models:
        raise ValueError("the model pool is empty")
    for name, table in (("quality", quality), ("cost", cost)):
        missing = [m for m in models if m not in table.columns]
        if missing:
            raise ValueError(f"{name} has no column for pool model(s) {missing}; it has {list(table.columns)}")
    if len(cost) != len(quality):
        raise ValueError(f"quality has {len(quality)} rows but cost has {len(cost)}")
    q = quality[models].to_numpy(dtype=np.float64)
    c = cost[models].to_numpy(dtype=np.float64)
    for name, a in (("quality", q), ("cost", c)):
        if not np.isfinite(a).all():
            row, col = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"{name} row {quality.index[row]!r}, model {models[col]!r} is not a finite number")
    if (c < 0).any():
        row, col = np.argwhere(c < 0)[0]
        raise ValueError(f"cost row {quality.index[row]!r}, model {models[col]!r} is negative")
    return q, c, models


def route_frontier(
    quality: pd.DataFrame,
    cost: pd.DataFrame,
    *,
    target_quality: float | None = None,
    budget_per_prompt: float | None = None,
    budget_per_1k: float | None = None,
    model_share: tuple[str, float] | None = None,
    lam: float | None = None,
    pool: Sequence[str] | None = None,
    iterations: int = 60,
    fill: bool = True,
) -> FrontierRoute:
    """Route every prompt to argmax_m (quality_m - lambda * cost_m) over `pool`.

    `quality` and `cost` are (prompts x models) predictions (cost in dollars per call).
    Give exactly one of: `lam` directly; `target_quality` (the largest lambda, i.e. the
    cheapest routing, whose mean predicted quality is >= it); `budget_per_prompt` or
    `budget_per_1k` dollars (the smallest lambda, i.e. the best quality, whose mean
    predicted cost is within it); `model_share=(model, share)` (the lambda whose share of
    calls to `model` is closest to `share` without exceeding it when possible). Lambda is
    found by bisection on a log scale: mean quality and mean cost only fall as lambda
    rises. `pool` restricts the choice to a subset of the columns (no retraining).
    """
    q, c, models = _frontier_inputs(quality, cost, pool)
    asked = [x is not None for x in (lam, target_quality, budget_per_prompt, budget_per_1k, model_share)]
    if sum(asked) != 1:
        raise ValueError("give exactly one of lam, target_quality, budget_per_prompt, budget_per_1k, model_share")
    if budget_per_1k is not None:
        budget_per_prompt = float(budget_per_1k) / 1000.0

    def at(lam_try: float):
        idx = frontier_choice(q, c, lam_try)
        rows = np.arange(len(q))
        return idx, float(q[rows, idx].mean()), float(c[rows, idx].mean())

    if lam is not None:
        if not float(lam) >= 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        target, chosen = {"lambda": float(lam)}, float(lam)
        met = True
    else:
        # lambda spans "quality only" (tiny) to "cost only" (huge): relative to the spread
        # of costs and qualities, so the bisection works whatever the currency unit.
        spread_c = float(np.ptp(c)) or 1.0
        lo, hi = 1e-9 / spread_c, 1e9 / spread_c
        if target_quality is not None:
            if not 0.0 <= float(target_quality) <= 1.0:
                raise ValueError(f"target quality must be in [0, 1], got {target_quality}")
            target = {"mean_quality": float(target_quality)}
            ok = lambda r: r[1] >= float(target_quality) - 1e-12  # noqa: E731 - feasible at small lambda
        elif budget_per_prompt is not None:
            if not float(budget_per_prompt) >= 0:
                raise ValueError(f"budget must be >= 0, got {budget_per_prompt}")
            target = {"budget_per_prompt": float(budget_per_prompt)}
            ok = lambda r: r[2] <= float(budget_per_prompt) + 1e-15  # noqa: E731 - feasible at large lambda
        else:
            name, share = model_share
            if name not in models:
                raise ValueError(f"model_share names {name!r}, which is not in the pool {models}")
            if not 0.0 <= float(share) <= 1.0:
                raise ValueError(f"model share must be in [0, 1], got {share}")
            j = models.index(name)
            target = {"model_share": [name, float(share)]}
            # the named model's share usually falls as lambda rises when it is the dear
            # one; bisect on "share <= target", which holds at the cost-only end
            # for any model that is not the cheapest.
            ok = lambda r: float((r[0] == j).mean()) <= float(share) + 1e-12  # noqa: E731
        # `ok` holds at one end of [lo, hi] (small lambda for a quality target, large for
        # a budget or share) and, being monotone, on one side of a single boundary
        near, far = (lo, hi) if target_quality is not None else (hi, lo)
        if not ok(at(near)):
            chosen, met = near, False
        elif ok(at(far)):
            chosen, met = far, True
        else:
            good, bad = np.log(near), np.log(far)  # bisect in log space, keeping `ok` at `good`
            for _ in range(iterations):
                mid = (good + bad) / 2
                good, bad = (mid, bad) if ok(at(np.exp(mid))) else (good, mid)
            chosen, met = float(np.exp(good)), True
            if fill and budget_per_prompt is not None:
                idx = _fill(q, c, at(chosen)[0], at(float(np.exp(bad)))[0], float(budget_per_prompt))
                return _route(quality, models, q, c, idx, chosen, target, met)
    idx, mq, mc = at(chosen)
    names = np.asarray(models, dtype=object)[idx]
    choice = pd.Series(names, index=quality.index, name="model")
    share = {m: float((idx == j).mean()) for j, m in enumerate(models)}
    return FrontierRoute(
        choice=choice, lam=float(chosen), mean_quality=mq, mean_cost=mc, share=share, target=target, met=bool(met)
    )


def _fill(q: np.ndarray, c: np.ndarray, cheap: np.ndarray, dear: np.ndarray, budget: float) -> np.ndarray:
    """Upgrade prompts from `cheap` to `dear` choices while the mean cost stays <= budget."""
    rows = np.arange(len(q))
    idx = cheap.copy()
    moved = np.flatnonzero(cheap != dear)
    if not len(moved):
        return idx
    extra = c[moved, dear[moved]] - c[moved, cheap[moved]]
    gain = q[moved, dear[moved]] - q[moved, cheap[moved]]
    ratio = np.where(extra > 0, gain / np.where(extra > 0, extra, 1.0), np.inf)
    tie = np.random.default_rng(12345).permutation(len(q))[moved]  # fixed order among equal ratios
    order = np.lexsort((tie, -np.round(ratio, 12)))
    room = budget * len(q) - c[rows, cheap].sum()
    spent = np.cumsum(extra[order])
    take = order[spent <= room + 1e-15]
    idx[moved[take]] = dear[moved[take]]
    # what is left (less than the next such upgrade) may still buy a smaller one, to a model
    # off the convex frontier: one greedy pass by quality gained per extra dollar
    room -= float(extra[take].sum())
    if room > 0:
        cur_q, cur_c = q[rows, idx], c[rows, idx]
        gain = q - cur_q[:, None]
        more = c - cur_c[:, None]
        ok = (gain > 0) & (more > 0) & (more <= room)
        if ok.any():
            ratio = np.where(ok, gain / np.where(more > 0, more, 1.0), -np.inf)
            best = ratio.argmax(axis=1)
            cand = np.flatnonzero(np.isfinite(ratio[rows, best]))
            for i in cand[np.argsort(-ratio[cand, best[cand]], kind="stable")]:
                step = more[i, best[i]]
                if step <= room:
                    idx[i] = best[i]
                    room -= step
    return idx


def _route(quality, models, q, c, idx, lam, target, met) -> FrontierRoute:
    rows = np.arange(len(q))
    choice = pd.Series(np.asarray(models, dtype=object)[idx], index=quality.index, name="model")
    share = {m: float((idx == j).mean()) for j, m in enumerate(models)}
    return FrontierRoute(
        choice=choice,
        lam=float(lam),
        mean_quality=float(q[rows, idx].mean()),
        mean_cost=float(c[rows, idx].mean()),
        share=share,
        target=target,
        met=bool(met),
    )


def frontier_path(
    quality: pd.DataFrame, cost: pd.DataFrame, *, pool: Sequence[str] | None = None, n: int = 60
) -> pd.DataFrame:
    """The whole frontier as a table: one row per lambda on a log grid (plus 0), with the
    mean predicted quality and cost; its points are every choice the policy can make."""
    q, c, models = _frontier_inputs(quality, cost, pool)
    spread = float(np.ptp(c)) or 1.0
    lams = np.concatenate([[0.0], np.geomspace(1e-4 / spread, 1e4 / spread, n)])
    rows = []
    for lam in lams:
        idx = frontier_choice(q, c, lam)
        r = np.arange(len(q))
        rows.append(
            {"lambda": float(lam), "mean_quality": float(q[r, idx].mean()), "mean_cost": float(c[r, idx].mean())}
        )
    return pd.DataFrame(rows)


def routing_cost(choice: pd.Series, prices: Mapping[str, float], *, tokens_per_prompt=None) -> float:
    """Total cost of a choice (same units as the prices / budget)."""
    price = np.array([float(prices[m]) for m in choice])
    if tokens_per_prompt is None:
        return float(price.sum())
    tokens = np.broadcast_to(np.asarray(tokens_per_prompt, dtype=np.float64), (len(choice),))
    return float((tokens * price / 1e6).sum())
