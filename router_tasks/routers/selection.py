"""Model selection inside a router's own training data.

A router that picks settings (the ensemble's blend weights, kNN's k and temperature)
picks them here, on a validation split carved from the labels it was given, never on
prompts it will be scored on: inside a cross-fit fold that is nested cross-validation,
and the benchmark figures are never the ones the settings were chosen on.

The split holds out whole *clusters* of prompts (k-means on the prompt embeddings), not
random prompts: a setting then wins by doing well on topics absent from the rest of the
training data, which is what a team's new traffic looks like, instead of by memorising
near-duplicates of training prompts. The criterion is the exact-curve APGR of the
predicted strong-weak gap, the figure the evaluation reports.
"""

from __future__ import annotations

import numpy as np

#: fewest validation prompts with both models' labels for a choice to mean anything;
#: below this a router keeps its fallback settings
MIN_VALIDATION = 40


def cluster_split(emb: np.ndarray, share: float = 0.25, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Boolean mask of validation rows: whole k-means clusters, about `share` of the rows.

    Deterministic for a seed. Clusters are taken in a seeded random order until the share
    is reached; with fewer rows than clusters every row is its own cluster.
    """
    from sklearn.cluster import KMeans

    n = len(emb)
    if n < 4:
        return np.zeros(n, dtype=bool)
    k = int(min(clusters, n))
    labels = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit_predict(np.asarray(emb, np.float64))
    order = np.random.default_rng(seed).permutation(k)
    val = np.zeros(n, dtype=bool)
    for c in order:
        if val.mean() >= share:
            break
        val |= labels == c
    if val.all():  # one huge cluster: keep something to train on
        val[:] = False
    return val


def can_judge(strong_q: np.ndarray, weak_q: np.ndarray) -> bool:
    """Whether validation prompts can decide a choice: enough of them (`MIN_VALIDATION`)
    and a strong-weak gap for a ranking to recover (with none, every APGR is NaN)."""
    strong_q, weak_q = np.asarray(strong_q, np.float64), np.asarray(weak_q, np.float64)
    return len(strong_q) >= MIN_VALIDATION and abs(np.nansum(strong_q) - np.nansum(weak_q)) > 1e-9


def exact_apgr(score: np.ndarray, strong_q: np.ndarray, weak_q: np.ndarray) -> float:
    """Average performance gap recovered along the exact per-prompt curve.

    Prompts sorted by `score` (highest first) go to the strong model one at a time; the
    curve is the mean quality after each step, scaled so all-weak = 0 and all-strong = 1;
    APGR is its trapezoid mean. Ties are broken by row order (stable sort). NaN when the
    models tie overall (no gap to recover).
    """
    score, s, w = (np.asarray(a, np.float64) for a in (score, strong_q, weak_q))
    gap = s.sum() - w.sum()
    if len(s) == 0 or abs(gap) < 1e-12:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    pgr = np.concatenate([[0.0], np.cumsum((s - w)[order])]) / gap
    return float(np.trapezoid(pgr, dx=1.0 / len(s)))


def simplex_grid(n: int, step: float = 0.25) -> np.ndarray:
    """Every weight vector of length `n` with entries in multiples of `step`, summing to 1."""
    m = int(round(1 / step))
    out: list[list[int]] = []

    def rec(prefix: list[int], left: int, slots: int) -> None:
        if slots == 1:
            out.append(prefix + [left])
            return
        for v in range(left, -1, -1):
            rec(prefix + [v], left - v, slots - 1)

    rec([], m, n)
    return np.asarray(out, dtype=np.float64) / m
