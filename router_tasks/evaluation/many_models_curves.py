"""Cost-quality curves of the many-model evaluation and their headline figures: the zero
router (upper convex hull of the single models), the oracle's curve, a curve read at any
cost (`step_interp`), and `curve_metrics` (area over the hull as a share of the oracle's,
worst gap, cost to match the best single model, accuracy at the cheapest cost)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router_tasks.routing.choice import frontier_choice


def upper_hull(cost: Sequence[float], acc: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing upper convex hull of (cost, acc) points (linear
    cost: mixing two policies reaches the segment between them)."""
    pts = sorted(zip(map(float, cost), map(float, acc), strict=False), key=lambda p: (p[0], -p[1]))
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
    xs, ys = zip(*hull, strict=False)
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
    spread = float(np.ptp(cost)) or 1.0
    xs, ys = [], []
    rows = np.arange(len(correct))
    for lam in np.concatenate([[0.0], np.geomspace(1e-3 / spread, 1e6 / spread, n)]):
        idx = frontier_choice(correct.astype(float), cost, lam)
        xs.append(cost[rows, idx].mean())
        ys.append(correct[rows, idx].mean())
    return upper_hull(xs, ys)


def curve_metrics(
    px, py, *, hull: tuple, oracle: tuple, grid: np.ndarray, best: tuple[float, float], cheapest_cost: float
) -> dict:
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
