"""Routing metrics against hand-computed small cases (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from router_tasks.evaluation import metrics as mx

# 4 prompts: strong right on 0, 1, 3; weak right on 1 only. Strong mean .75, weak .25.
STRONG = [1, 1, 0, 1]
WEAK = [0, 1, 0, 0]
SCORES = [0.9, 0.1, 0.5, 0.3]


def points(curve: pd.DataFrame) -> list[tuple[float, float]]:
    return [(round(x, 9), round(y, 9)) for x, y in zip(curve["strong_share"], curve["quality"], strict=False)]


def test_exact_curve_by_hand():
    # order by score: p0 (gain 1), p2 (0), p3 (1), p1 (0)
    c = mx.exact_curve(SCORES, STRONG, WEAK)
    assert points(c) == [(0, 0.25), (0.25, 0.5), (0.5, 0.5), (0.75, 0.75), (1, 0.75)]
    assert mx.auc(c) == pytest.approx(0.5625)
    assert mx.apgr(c, 0.75, 0.25) == pytest.approx(0.625)
    # targets .35 / .5 / .65: first crossings at 10%, 25% and 65% strong calls
    assert mx.cpt(c, 0.75, 0.25, 0.2, "exact") == pytest.approx(0.10)
    assert mx.cpt(c, 0.75, 0.25, 0.5, "exact") == pytest.approx(0.25)
    assert mx.cpt(c, 0.75, 0.25, 0.8, "exact") == pytest.approx(0.65)


def test_exact_curve_ties_enter_together_and_ignore_order():
    scores = [0.5, 0.5, 0.2, 0.2]
    strong, weak = [1, 0, 1, 1], [0, 0, 0, 1]
    c = mx.exact_curve(scores, strong, weak)
    # one point per tie group, not per prompt: a threshold cannot split a tie
    assert points(c) == [(0, 0.25), (0.5, 0.5), (1, 0.75)]
    assert mx.apgr(c, 0.75, 0.25) == pytest.approx(0.5)
    assert mx.cpt(c, 0.75, 0.25, 0.2, "exact") == pytest.approx(0.2)
    perm = [1, 3, 0, 2]
    c2 = mx.exact_curve(np.take(scores, perm), np.take(strong, perm), np.take(weak, perm))
    assert points(c2) == points(c)


def test_routellm_curve_two_bins_by_hand():
    # edges: min .1, median (.3+.5)/2 = .4, max .9 ("> max" for the last edge)
    c = mx.routellm_curve(SCORES, STRONG, WEAK, num_results=2)
    assert list(np.round(c["threshold"], 9)) == [0.9, 0.4, 0.1]
    assert points(c) == [(0, 0.25), (0.5, 0.5), (1, 0.75)]
    assert mx.auc(c) == pytest.approx(0.5)
    assert mx.apgr(c, 0.75, 0.25) == pytest.approx(0.5)
    assert mx.cpt(c, 0.75, 0.25, 0.5, "routellm") == pytest.approx(0.5)


def test_routellm_edges_are_pandas_qcut_bins():
    s = np.random.default_rng(3).random(997)
    _, bins = pd.qcut(s, 10, retbins=True)
    c = mx.routellm_curve(s, s > 0.5, s > 0.7)
    assert np.allclose(np.sort(c["threshold"]), bins)
    assert len(c) == 11 and c["strong_share"].iloc[0] == 0 and c["strong_share"].iloc[-1] == 1


def test_routellm_curve_with_tied_scores_by_hand():
    # six prompts scored 0, four scored 1. Deciles (linear): edges 0 x6, .4, 1 x4.
    scores = [0] * 6 + [1] * 4
    strong = [1] * 10
    weak = [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    c = mx.routellm_curve(scores, strong, weak)
    assert len(c) == 11  # duplicate edges kept: repeated points, not an error
    assert sorted(set(points(c))) == [(0, 0.5), (0.4, 0.7), (1, 1.0)]
    assert mx.auc(c) == pytest.approx(0.75)  # .4*(.5+.7)/2 + .6*(.7+1)/2
    assert mx.apgr(c, 1.0, 0.5) == pytest.approx(0.5)
    # target .75 lies between (.4, .7) and (1, 1): .4 + (.05/.3)*.6 = .5
    assert mx.cpt(c, 1.0, 0.5, 0.5, "routellm") == pytest.approx(0.5)
    e = mx.exact_curve(scores, strong, weak)
    assert points(e) == [(0, 0.5), (0.4, 0.7), (1, 1.0)]
    assert mx.cpt(e, 1.0, 0.5, 0.5, "exact") == pytest.approx(0.5)


def test_constant_scores_give_the_straight_line():
    for mode in mx.MODES:
        c = mx.curve([0.3] * 4, STRONG, WEAK, mode)
        assert mx.apgr(c, 0.75, 0.25) == pytest.approx(0.5)
        assert mx.cpt(c, 0.75, 0.25, 0.8, mode) == pytest.approx(0.8)


def test_oracle_by_hand_and_on_a_grid():
    # positive gaps on p0 and p3: two strong calls reach .75, more calls add nothing
    o = mx.oracle_curve(STRONG, WEAK)
    assert points(o) == [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 0.75), (1, 0.75)]
    assert mx.apgr(o, 0.75, 0.25) == pytest.approx(0.75)
    g = mx.oracle_curve(STRONG, WEAK, grid=[0, 0.1, 0.5, 1])
    assert list(np.round(g["quality"], 9)) == [0.25, 0.35, 0.75, 0.75]
    # RouteLLM's get_optimal_accuracy for binary results: weak + min(budget, #helpful) / n
    assert g["quality"].iloc[1] == pytest.approx(0.25 + min(0.1 * 4, 2) / 4)


def test_oracle_for_scores_never_routes_a_loss():
    strong, weak = [9.0, 5.0, 7.0], [6.0, 8.0, 7.0]  # only prompt 0 gains (+3)
    o = mx.oracle_curve(strong, weak)
    assert list(np.round(o["quality"], 9)) == [7.0, 8.0, 8.0, 8.0]


def test_random_baseline_is_seeded_and_near_half():
    rng = np.random.default_rng(0)
    a = (rng.random(3000) < 0.8).astype(float)
    b = (rng.random(3000) < 0.6).astype(float)
    for mode in mx.MODES:
        mean1, apgrs1 = mx.random_curves(a, b, mode, seeds=5)
        mean2, apgrs2 = mx.random_curves(a, b, mode, seeds=5)
        assert apgrs1 == apgrs2 and mean1.equals(mean2)
        assert len(apgrs1) == 5
        assert np.mean(apgrs1) == pytest.approx(0.5, abs=0.05)
    mean, _ = mx.random_curves(a, b, "routellm", seeds=5)
    assert len(mean) == 11  # same deciles every seed: curves average point by point


def test_summarize_reports_both_modes_and_matches_parts():
    s = mx.summarize(SCORES, STRONG, WEAK, num_results=2, random_seeds=3)
    assert s["n"] == 4 and s["strong_mean"] == 0.75 and s["weak_mean"] == 0.25
    assert s["exact"]["apgr"] == pytest.approx(0.625)
    assert s["exact"]["cpt80"] == pytest.approx(0.65)
    assert s["routellm"]["apgr"] == pytest.approx(0.5)
    assert s["exact"]["oracle_apgr"] == pytest.approx(0.75)
    # oracle on RouteLLM's grid (0, .5, 1): (.25+.75)/2*.5 + .75*.5 = .625 -> APGR .75
    assert s["routellm"]["oracle_apgr"] == pytest.approx(0.75)
    assert set(s["curves"]) == {(m, k) for m in mx.MODES for k in ("router", "random", "oracle")}


def test_undefined_apgr_is_nan_and_reported_as_none():
    c = mx.exact_curve([0.1, 0.2], [1, 0], [1, 0])
    assert math.isnan(mx.apgr(c, 0.5, 0.5))
    assert mx.summarize([0.1, 0.2], [1, 0], [1, 0], random_seeds=2)["exact"]["apgr"] is None


def test_bad_input_names_the_prompt():
    with pytest.raises(ValueError, match="prompt #1"):
        mx.exact_curve([0.1, float("nan")], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="equally long"):
        mx.routellm_curve([0.1, 0.2], [1], [0, 0])
    with pytest.raises(ValueError, match="no prompts"):
        mx.exact_curve([], [], [])


def test_calls_saved_at_95_percent_by_hand():
    # exact curve (0,.25) (.25,.5) (.5,.5) (.75,.75) (1,.75); 95% of the strong mean .75 is .7125,
    # first reached between (.5,.5) and (.75,.75): .5 + .2125/.25 * .25 = .7125 strong calls
    c = mx.exact_curve(SCORES, STRONG, WEAK)
    assert mx.calls_saved(c, 0.75, 0.95, "exact") == pytest.approx(1 - 0.7125)
    # 50% of .75 is .375: between (0,.25) and (.25,.5): .125 strong calls
    assert mx.calls_saved(c, 0.75, 0.5, "exact") == pytest.approx(0.875)
    # RouteLLM's two bins: (0,.25) (.5,.5) (1,.75); np.interp gives .5 + .2125/.25 * .5 = .925
    r = mx.routellm_curve(SCORES, STRONG, WEAK, num_results=2)
    assert mx.calls_saved(r, 0.75, 0.95, "routellm") == pytest.approx(0.075)
    s = mx.summarize(SCORES, STRONG, WEAK, quality_target=0.5, prices=(10.0, 1.0), random_seeds=2)
    e = s["exact"]
    assert e["calls_saved_at_95"] == pytest.approx(0.2875) and e["calls_saved_at_target"] == pytest.approx(0.875)
    # the dollars: the calls saved times (1 - weak price / strong price)
    assert e["dollars_saved_at_95"] == pytest.approx(0.2875 * 0.9)
    assert e["dollars_saved_at_target"] == pytest.approx(0.875 * 0.9)
    # the oracle spends its calls on p0 and p3 first: (.25,.5) (.5,.75): .25 + .2125/.25 * .25
    assert e["oracle_calls_saved_at_95"] == pytest.approx(1 - 0.4625)
    assert (
        s["quality_target"] == 0.5
        and mx.summarize(SCORES, STRONG, WEAK, random_seeds=2)["exact"]["dollars_saved_at_95"] is None
    )  # no prices, no dollars


def test_calls_saved_above_the_scale_floor_and_edge_cases():
    # an MT-Bench-like 1-10 scale: strong 9 on average, weak 6; the curve (0,6) (.5,9) (1,9)
    c = mx.exact_curve([0.9, 0.1], [10, 8], [4, 8])
    # 95% above the floor 1: 1 + .95 * 8 = 8.6, reached at (8.6 - 6) / 3 * .5 strong calls
    assert mx.calls_saved(c, 9.0, 0.95, "exact", floor=1.0) == pytest.approx(1 - 2.6 / 6)
    assert mx.calls_saved(c, 9.0, 0.95, "exact") == pytest.approx(1 - 2.55 / 6)  # 95% of 9 = 8.55
    # a weak model as good as the strong one: every call saved
    flat = mx.exact_curve([0.3, 0.6], [1, 0], [1, 0])
    assert mx.calls_saved(flat, 0.5, 0.95, "exact") == 1.0
    assert mx.dollars_saved(0.5, 0.0, 1.0) is None and mx.dollars_saved(0.5, 2.0, 0.0) == 0.5
    with pytest.raises(ValueError, match="quality_target"):
        mx.summarize(SCORES, STRONG, WEAK, quality_target=1.5)
