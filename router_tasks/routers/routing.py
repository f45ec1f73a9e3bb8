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
"""

from __future__ import annotations

from typing import Mapping, Sequence

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
    bad = [m for m, p in zip(models, price) if not np.isfinite(p) or p < 0]
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
    """Per prompt, the model with the best predicted quality per dollar within the budget.

    Only models costing <= `budget_per_prompt` for that prompt are candidates; among them
    the highest quality / cost wins (a free model with any quality > 0 beats every paid
    one; ties go to the higher quality, then the cheaper). Where no model fits the budget,
    the cheapest model. Returns model names indexed like `quality`.
    """
    if not float(budget_per_prompt) >= 0:
        raise ValueError(f"budget_per_prompt must be >= 0, got {budget_per_prompt}")
    q, models, price = _checked(quality, prices)
    cost = _cost_per_prompt(price, len(q), tokens_per_prompt)
    choice = np.empty(len(q), dtype=np.int64)
    for i in range(len(q)):
        ok = np.flatnonzero(cost[i] <= float(budget_per_prompt))
        if not len(ok):
            choice[i] = int(np.lexsort((-q[i], cost[i]))[0])
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(cost[i, ok] > 0, q[i, ok] / cost[i, ok], np.where(q[i, ok] > 0, np.inf, 0.0))
        choice[i] = ok[np.lexsort((cost[i, ok], -q[i, ok], -value))[0]]
    return pd.Series(np.asarray(models, dtype=object)[choice], index=quality.index, name="model")


def routing_cost(choice: pd.Series, prices: Mapping[str, float], *, tokens_per_prompt=None) -> float:
    """Total cost of a choice (same units as the prices / budget)."""
    price = np.array([float(prices[m]) for m in choice])
    if tokens_per_prompt is None:
        return float(price.sum())
    tokens = np.broadcast_to(np.asarray(tokens_per_prompt, dtype=np.float64), (len(choice),))
    return float((tokens * price / 1e6).sum())
