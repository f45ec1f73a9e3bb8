"""Routing metrics: quality against the share of strong-model calls, APGR, AUC, CPT.

Inputs are per prompt: the router's `strong_win_rate` score (higher = send to the strong
model), and the quality each model actually got (0/1 correctness, or a judge score).
A threshold t routes every prompt with score >= t to the strong model; sweeping t traces
a curve of (strong share, mean quality) from (0, weak mean) to (1, strong mean).

Two ways to trace it, both reported:

* "routellm" reproduces RouteLLM's evaluation code (lm-sys/RouteLLM,
  `routellm/evals/benchmarks.py` + `evaluate.py`): the thresholds are the 11 edges of
  10 equal-count quantile bins of the scores (`pd.qcut(scores, 10, retbins=True)`, i.e.
  linear-interpolated quantiles at 0, 0.1, ..., 1); edge i routes `score >= edge`
  except the last edge, which routes `score > edge` (so it yields 0% strong calls). The
  points are sorted by strong share; AUC is `np.trapz` of quality over strong share in
  [0, 1]; APGR = (AUC - weak AUC) / (strong AUC - weak AUC), where the weak/strong AUCs
  integrate the constant weak/strong mean over the same x; CPT(p) is
  `np.interp(weak + p * (strong - weak), quality, strong_share)`.
  Differences from the repo, on purpose: duplicate edges (tied scores) are kept rather
  than raising (old `pd.qcut`) or being dropped (newer repo code): a duplicate edge
  repeats a point, which changes neither AUC nor the curve; with all scores equal this
  gives the straight line from weak to strong instead of a single point. Like the repo,
  `np.interp` assumes the quality values increase with the strong share; where a curve
  dips, CPT(routellm) follows numpy's result, CPT(exact) below does not.

* "exact" uses every distinct score as a threshold: the per-prompt curve. Prompts with
  equal scores cannot be separated by a threshold, so a tie group enters at once, and the
  curve is linear between groups, which is also the expected quality if ties were
  broken at random. CPT(p) is the smallest strong share at which the curve first
  reaches the target (linear within a segment).

Savings: the share of strong-model calls a router saves while keeping a share of the strong
model's quality (the seed's headline, "cost saved at 95% of GPT-4's quality"): the target
is `floor + target x (strong mean - floor)`, with `floor` the lowest quality of the
benchmark's scale (0 for accuracy and 0-1 labels, 1 for MT-Bench's 1-10 grades, so 95% of
the quality means the same as on a 0-1 scale), the strong share needed is where the
curve first reaches it (by each mode's rule, as for CPT), and the saving is 1 minus that
share; with a price per call for both models, the dollars saved are that share times
(1 - weak price / strong price). A weak model already at the target saves 100%.

Baselines: `random` averages the curve and APGR of uniformly random scores over seeds
(RouteLLM averages its random router over 10 runs; its expected APGR is 0.5). `oracle`
routes by the true quality gap and never spends a strong call where it does not help
(RouteLLM's `get_optimal_accuracy`): at budget b it gets weak mean + the b*n largest
positive gaps / n, fractional calls interpolated.

Strong shares and CPT are fractions in [0, 1]; quality stays in the benchmark's units
(accuracy 0-1, MT-Bench 1-10); APGR is unit-free. An undefined value (e.g. APGR when
strong and weak have the same mean) is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.core.schemas import finite_or_none

MODES = ("routellm", "exact")
CPT_LEVELS = (0.2, 0.5, 0.8)
#: the seed's headline: the strong-model calls saved at this share of its quality
SAVINGS_LEVEL = 0.95
CURVE_COLUMNS = ["threshold", "strong_share", "quality"]
RANDOM_BASELINE_ENTROPY = 0x7E1A5EED


class LeakageError(RuntimeError):
    """A prompt the router was trained on was about to be scored."""


def _trapz(y, x) -> float:
    # numpy 2 renamed trapz to trapezoid; same rule either way
    fn = getattr(np, "trapezoid", None) or np.trapz
    return float(fn(np.asarray(y, float), np.asarray(x, float)))


def _arrays(scores, strong_quality, weak_quality) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    a = np.asarray(strong_quality, dtype=float)
    b = np.asarray(weak_quality, dtype=float)
    if not (s.shape == a.shape == b.shape) or s.ndim != 1:
        raise ValueError(
            f"scores, strong and weak quality must be 1-d and equally long; got {s.shape}, {a.shape}, {b.shape}"
        )
    if len(s) == 0:
        raise ValueError("no prompts to evaluate")
    for name, arr in (("score", s), ("strong_quality", a), ("weak_quality", b)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise ValueError(f"{name} of prompt #{bad[0]} is {arr[bad[0]]}; every value must be a finite number")
    return s, a, b


def _routed_quality(selection: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.where(selection, a, b).mean())


def routellm_curve(scores, strong_quality, weak_quality, num_results: int = 10) -> pd.DataFrame:
    """RouteLLM's curve: one point per quantile edge (see module docstring)."""
    s, a, b = _arrays(scores, strong_quality, weak_quality)
    edges = np.quantile(s, np.linspace(0.0, 1.0, num_results + 1))  # = pd.qcut's retbins
    rows = []
    for i, edge in enumerate(edges):
        sel = s >= edge if i != len(edges) - 1 else s > edge
        rows.append((float(edge), float(sel.mean()), _routed_quality(sel, a, b)))
    curve = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    return curve.sort_values("strong_share", kind="stable").reset_index(drop=True)


def exact_curve(scores, strong_quality, weak_quality) -> pd.DataFrame:
    """Per-prompt curve: a point after each group of equal scores, highest first."""
    s, a, b = _arrays(scores, strong_quality, weak_quality)
    n = len(s)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = np.cumsum((a - b)[order])
    # index of the last prompt of each tie group
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    base = b.sum()
    rows = [(math.inf, 0.0, base / n)]
    rows += [(float(s_sorted[e]), (e + 1) / n, (base + gain[e]) / n) for e in ends]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def curve(scores, strong_quality, weak_quality, mode: str = "routellm", num_results: int = 10) -> pd.DataFrame:
    if mode == "routellm":
        return routellm_curve(scores, strong_quality, weak_quality, num_results)
    if mode == "exact":
        return exact_curve(scores, strong_quality, weak_quality)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def auc(curve_df: pd.DataFrame) -> float:
    """Area under quality vs strong share (x in [0, 1]), trapezoid rule."""
    return _trapz(curve_df["quality"], curve_df["strong_share"])


def apgr(curve_df: pd.DataFrame, strong_mean: float, weak_mean: float) -> float:
    """Average performance gap recovered: (AUC - weak area) / (strong area - weak area)."""
    x = curve_df["strong_share"].to_numpy(float)
    span = float(x.max() - x.min())
    gap = (strong_mean - weak_mean) * span
    if span == 0 or gap == 0:
        return math.nan
    return (auc(curve_df) - weak_mean * span) / gap


def cpt(curve_df: pd.DataFrame, strong_mean: float, weak_mean: float, level: float, mode: str = "routellm") -> float:
    """Call-performance threshold: strong share needed to reach `level` of the gap."""
    return share_for_quality(curve_df, weak_mean + level * (strong_mean - weak_mean), mode)


def share_for_quality(curve_df: pd.DataFrame, target: float, mode: str = "routellm") -> float:
    """The strong share at which the curve reaches quality `target` (NaN if it never does)."""
    x = curve_df["strong_share"].to_numpy(float)
    y = curve_df["quality"].to_numpy(float)
    if mode == "routellm":
        return float(np.interp(target, y, x))
    if mode != "exact":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    eps = 1e-12 * max(1.0, abs(target))
    if y[0] >= target - eps:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target - eps:
            y0, y1 = y[i - 1], y[i]
            return float(x[i - 1] + (target - y0) / (y1 - y0) * (x[i] - x[i - 1]))
    return math.nan  # never reached (only if the curve ends below the target)


def calls_saved(
    curve_df: pd.DataFrame,
    strong_mean: float,
    target: float = SAVINGS_LEVEL,
    mode: str = "routellm",
    floor: float = 0.0,
) -> float:
    """Share of strong-model calls saved while keeping `target` of the strong model's mean
    quality (measured above the scale's `floor`)."""
    share = share_for_quality(curve_df, floor + target * (strong_mean - floor), mode)
    return math.nan if math.isnan(share) else 1.0 - share


def dollars_saved(saved: float | None, strong_price: float | None, weak_price: float | None) -> float | None:
    """The share of an all-strong bill saved when `saved` of the calls go to the weak model
    instead (prices per call, or per token with equal tokens per call); None without prices."""
    if saved is None or strong_price is None or weak_price is None or strong_price <= 0 or math.isnan(saved):
        return None
    return saved * (1.0 - weak_price / strong_price)


def oracle_curve(strong_quality, weak_quality, grid: Sequence[float] | None = None) -> pd.DataFrame:
    """Best possible quality at each strong-call budget (budget fractions in `grid`).

    Without a grid: a point at every whole number of calls (the exact oracle curve).
    """
    a = np.asarray(strong_quality, float)
    b = np.asarray(weak_quality, float)
    n = len(a)
    gains = np.sort(np.clip(a - b, 0.0, None))[::-1]
    qual = (b.sum() + np.r_[0.0, np.cumsum(gains)]) / n
    share = np.arange(n + 1) / n
    if grid is None:
        return pd.DataFrame({"threshold": np.nan, "strong_share": share, "quality": qual})
    g = np.asarray(grid, float)
    return pd.DataFrame({"threshold": np.nan, "strong_share": g, "quality": np.interp(g, share, qual)})


def random_curves(
    strong_quality, weak_quality, mode: str = "routellm", *, seeds: int = 10, num_results: int = 10
) -> tuple[pd.DataFrame, list[float]]:
    """(mean curve, per-seed APGRs) of a router whose scores are uniform noise.

    Seeds 0..seeds-1 (mixed with a fixed entropy word), so the baseline is the same
    every run. The mean curve averages
    quality at equal strong share (RouteLLM groups by strong percentage the same way);
    for the exact mode every seed has points at k/n, so they line up.
    """
    a = np.asarray(strong_quality, float)
    b = np.asarray(weak_quality, float)
    curves, apgrs = [], []
    for seed in range(seeds):
        # a seed sequence of its own, so the noise cannot coincide with data that were
        # drawn from default_rng(0), default_rng(1), ... (a test caught exactly that)
        scores = np.random.default_rng([RANDOM_BASELINE_ENTROPY, seed]).random(len(a))
        c = curve(scores, a, b, mode, num_results)
        curves.append(c)
        apgrs.append(apgr(c, a.mean(), b.mean()))
    mean = pd.concat(curves).groupby("strong_share", as_index=False)["quality"].mean()
    mean.insert(0, "threshold", np.nan)
    return mean, apgrs


def summarize(
    scores,
    strong_quality,
    weak_quality,
    *,
    num_results: int = 10,
    random_seeds: int = 10,
    quality_target: float = SAVINGS_LEVEL,
    prices: tuple[float | None, float | None] | None = None,
    quality_floor: float = 0.0,
) -> dict:
    """Every metric in both modes, plus the curves (DataFrames under "curves").

    Returns {"n", "strong_mean", "weak_mean", "quality_target", "<mode>": {apgr, auc, cpt20,
    cpt50, cpt80, random_apgr, oracle_apgr, calls_saved_at_95, calls_saved_at_target,
    dollars_saved_at_95, dollars_saved_at_target, random_calls_saved_at_95,
    oracle_calls_saved_at_95}, "curves": {(mode, method): DataFrame}} with methods "router",
    "random" and "oracle". `prices`: (strong, weak) price per call or per token, for the
    dollar savings (None: not known, reported as None); `quality_floor`: the lowest quality
    of the benchmark's scale (see the savings above).
    """
    if not 0 < float(quality_target) <= 1:
        raise ValueError(f"quality_target must be in (0, 1], got {quality_target!r}")
    s, a, b = _arrays(scores, strong_quality, weak_quality)
    sm, wm = float(a.mean()), float(b.mean())
    strong_price, weak_price = prices or (None, None)
    out: dict = {
        "n": int(len(s)),
        "strong_mean": sm,
        "weak_mean": wm,
        "quality_target": float(quality_target),
        "quality_floor": float(quality_floor),
        "prices": None if prices is None else {"strong": strong_price, "weak": weak_price},
        "curves": {},
    }
    for mode in MODES:
        c = curve(s, a, b, mode, num_results)
        rnd_curve, rnd_apgrs = random_curves(a, b, mode, seeds=random_seeds, num_results=num_results)
        grid = np.linspace(0, 1, num_results + 1) if mode == "routellm" else None
        orc = oracle_curve(a, b, grid)
        m = {"apgr": apgr(c, sm, wm), "auc": auc(c)}
        for level in CPT_LEVELS:
            m[f"cpt{round(level * 100)}"] = cpt(c, sm, wm, level, mode)
        m["random_apgr"] = float(np.mean(rnd_apgrs)) if not all(math.isnan(v) for v in rnd_apgrs) else math.nan
        m["oracle_apgr"] = apgr(orc, sm, wm)
        for name, level in (("95", SAVINGS_LEVEL), ("target", float(quality_target))):
            m[f"calls_saved_at_{name}"] = calls_saved(c, sm, level, mode, quality_floor)
            m[f"dollars_saved_at_{name}"] = dollars_saved(
                finite_or_none(m[f"calls_saved_at_{name}"]), strong_price, weak_price
            )
        m["random_calls_saved_at_95"] = calls_saved(rnd_curve, sm, SAVINGS_LEVEL, mode, quality_floor)
        m["oracle_calls_saved_at_95"] = calls_saved(orc, sm, SAVINGS_LEVEL, mode, quality_floor)
        out[mode] = {k: finite_or_none(v) for k, v in m.items()}
        out["curves"][(mode, "router")] = c
        out["curves"][(mode, "random")] = rnd_curve
        out["curves"][(mode, "oracle")] = orc
    return out
