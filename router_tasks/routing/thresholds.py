"""Thresholds and targets: the calibration maths, pure functions over a sample's scores
or predictions (the `calibrate` stage that stores them is `evaluation.calibration`).

Routing rule, as everywhere here: a prompt goes to the strong model when
`strong_win_rate >= threshold`. Ties matter: a kNN router gives many prompts the same
score, so not every share is reachable. `threshold_for_share` returns the reachable share
nearest the target (the lower, cheaper one when two are equally near) and says what it
achieves. `target_for_budget` is the many-model counterpart: the quality target whose
`cheapest_adequate` routing stays within a budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routing.choice import cheapest_adequate, routing_cost

#: `strong_win_rate` is the predicted quality gap mapped to [0, 1]: at 0.5 neither model is
#: predicted better. The router's own rule when nobody chose a strong share: the strong
#: model only where it is predicted strictly better (the next float above 0.5, as the rule
#: is `>=`), so prompts both models are predicted to answer equally well go to the cheaper.
NEUTRAL_THRESHOLD = float(np.nextafter(0.5, 1.0))


def checked_scores(scores: Sequence[float]) -> np.ndarray:
    """A calibration sample's scores as a flat float array; raises on an empty sample or a
    non-finite score (naming the prompt's position)."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    if not len(s):
        raise ValueError("cannot calibrate on an empty sample of prompts")
    bad = np.flatnonzero(~np.isfinite(s))
    if len(bad):
        raise ValueError(f"score of sample prompt #{bad[0]} is {s[bad[0]]}")
    return s


def threshold_for_share(scores: Sequence[float], target_share: float) -> tuple[float, float]:
    """(threshold, achieved share of scores >= threshold) nearest `target_share`.

    Candidates are every distinct score (its share counts all ties at once) and one value
    just above the maximum (share 0).
    """
    if not 0.0 <= float(target_share) <= 1.0:
        raise ValueError(f"target strong share must be in [0, 1], got {target_share}")
    s = checked_scores(scores)
    distinct = np.unique(s)[::-1]  # descending
    shares = np.array([(s >= t).mean() for t in distinct])
    thresholds = np.concatenate([[np.nextafter(distinct[0], np.inf)], distinct])
    shares = np.concatenate([[0.0], shares])
    gap = np.abs(shares - float(target_share))
    best = int(np.flatnonzero(np.isclose(gap, gap.min(), rtol=0, atol=1e-12))[0])  # first = lowest share
    return float(thresholds[best]), float(shares[best])


def target_for_budget(
    quality: pd.DataFrame,
    prices: dict,
    budget_per_prompt: float,
    *,
    tokens_per_prompt=None,
) -> tuple[float, pd.Series, float]:
    """Many models: the highest quality target whose `cheapest_adequate` routing keeps the
    mean cost per prompt within `budget_per_prompt`. Returns (target, choice, mean cost).

    Candidates are 0 and every distinct predicted quality (between them the choice cannot
    change); all are tried and the largest affordable one wins. If even target 0 (the
    cheapest model for every prompt) is over budget, the answer is 0 and the returned
    cost says by how much the budget is missed.
    """
    if not float(budget_per_prompt) >= 0:
        raise ValueError(f"budget_per_prompt must be >= 0, got {budget_per_prompt}")
    candidates = np.unique(np.concatenate([[0.0], quality.to_numpy(float).ravel()]))
    best = (0.0, cheapest_adequate(quality, prices, 0.0, tokens_per_prompt=tokens_per_prompt))
    for t in candidates:
        choice = cheapest_adequate(quality, prices, float(t), tokens_per_prompt=tokens_per_prompt)
        if routing_cost(choice, prices, tokens_per_prompt=tokens_per_prompt) / len(quality) <= float(budget_per_prompt):
            best = (float(t), choice)
    target, choice = best
    return target, choice, routing_cost(choice, prices, tokens_per_prompt=tokens_per_prompt) / len(quality)
