"""Routing policies on constructed cases where the right choice is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_tasks.routing.choice import (
    best_under_budget,
    cheapest_adequate,
    route_frontier,
    route_two,
    routing_cost,
)

PRICES = {"gpt-4": 30.0, "mixtral": 0.6, "llama-8b": 0.2, "local": 0.0}


def quality(rows):
    return pd.DataFrame(rows, columns=list(PRICES), index=[f"p{i}" for i in range(len(rows))])


def test_route_two_is_routellm_threshold_rule():
    win = np.array([0.1, 0.5, 0.49999, 0.9])
    assert route_two(win, 0.5).tolist() == [False, True, False, True]  # >= threshold -> strong
    assert route_two(win, 0.0).all() and not route_two(win[:1], 1.0).any()
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        route_two(win, 1.5)
    with pytest.raises(ValueError, match="NaN at position 1"):
        route_two([0.2, np.nan], 0.5)


def test_cheapest_adequate_picks_cheapest_model_that_clears_target():
    q = quality(
        [
            [0.95, 0.90, 0.85, 0.30],  # llama-8b is the cheapest >= 0.8
            [0.95, 0.60, 0.40, 0.20],  # only gpt-4 clears 0.8
            [0.90, 0.88, 0.70, 0.85],  # the free local model clears it
            [0.70, 0.65, 0.50, 0.10],  # nobody clears 0.8: best predicted quality
        ]
    )
    choice = cheapest_adequate(q, PRICES, 0.8)
    assert choice.tolist() == ["llama-8b", "gpt-4", "local", "gpt-4"]
    assert list(choice.index) == list(q.index)
    # a lower target moves prompts to cheaper models, never to dearer ones
    assert cheapest_adequate(q, PRICES, 0.3).tolist() == ["local", "llama-8b", "local", "llama-8b"]
    # the strong model is not assumed perfect: when it is predicted worse, it is not the fallback
    weak_best = quality([[0.4, 0.7, 0.5, 0.1]])
    assert cheapest_adequate(weak_best, PRICES, 0.9).tolist() == ["mixtral"]


def test_cheapest_adequate_ties_and_token_prices():
    q = pd.DataFrame({"a": [0.9, 0.5], "b": [0.95, 0.5]})
    # same price: the better one; nobody adequate and equal quality: the cheaper one
    assert cheapest_adequate(q, {"a": 1.0, "b": 1.0}, 0.8).tolist() == ["b", "a"]
    assert cheapest_adequate(q, {"a": 2.0, "b": 1.0}, 0.99).tolist() == ["b", "b"]
    # $ per 1M tokens with per-prompt token counts give the same order as per-call prices
    assert cheapest_adequate(q, {"a": 1.0, "b": 2.0}, 0.8, tokens_per_prompt=[500, 2000]).tolist() == ["a", "a"]


def test_best_under_budget_spends_the_mean_budget_where_quality_gains_most():
    q = quality(
        [
            [0.95, 0.90, 0.50, 0.00],  # the free model is useless here: paying buys 0.5-0.95
            [0.95, 0.90, 0.85, 0.80],  # everything is fine: the free model is nearly as good
            [0.95, 0.90, 0.50, 0.40],
        ]
    )
    # the old quality-per-dollar rule sent all three to the free model; now a mean budget of
    # $0.2 per prompt ($0.6 in all) buys the most quality: mixtral on prompt 0 (+0.9) beats
    # llama-8b on all three (+0.5 +0.05 +0.1)
    choice = best_under_budget(q, PRICES, budget_per_prompt=0.2)
    assert routing_cost(choice, PRICES) / 3 <= 0.2 + 1e-12
    assert choice.tolist() == ["mixtral", "local", "local"]
    # half that: llama-8b where it gains most per dollar
    assert best_under_budget(q, PRICES, budget_per_prompt=0.2 / 3).tolist() == ["llama-8b", "local", "local"]
    # a bigger budget buys mixtral where it helps most, still never overspending
    richer = best_under_budget(q, PRICES, budget_per_prompt=0.5)
    assert routing_cost(richer, PRICES) / 3 <= 0.5 + 1e-12
    assert richer.tolist().count("mixtral") >= 1 and richer.iloc[1] in ("local", "llama-8b")
    # a huge budget buys the best predicted model everywhere
    assert best_under_budget(q, PRICES, 1e9).tolist() == ["gpt-4"] * 3
    # nothing fits: the cheapest model
    dear = {"gpt-4": 30.0, "mixtral": 5.0, "llama-8b": 4.0, "local": 3.0}
    assert best_under_budget(q, dear, 1.0).tolist() == ["local"] * 3
    # tokens: $/1M tokens x 100k tokens -> gpt-4 costs $3, mixtral $0.06, llama $0.02
    only_paid = quality([[0.9, 0.4, 0.1, 0.0]])
    assert best_under_budget(only_paid, PRICES, 0.1, tokens_per_prompt=100_000).tolist() == ["mixtral"]
    assert best_under_budget(only_paid, PRICES, 0.05, tokens_per_prompt=100_000).tolist() == ["llama-8b"]
    assert routing_cost(pd.Series(["gpt-4", "mixtral"]), PRICES, tokens_per_prompt=100_000) == pytest.approx(3.06)


def _world(n=400, seed=3):
    """Three models; the dear one is right more often, and which prompts the cheap ones get
    wrong is known to the 'router' with noise."""
    rng = np.random.default_rng(seed)
    q = pd.DataFrame(
        {
            "tiny": rng.uniform(0.1, 0.9, n),
            "mid": rng.uniform(0.5, 0.95, n),
            "big": rng.uniform(0.85, 1.0, n),
        }
    )
    cost = pd.DataFrame(
        {
            "tiny": rng.uniform(0.5, 1.5, n) * 1e-5,
            "mid": rng.uniform(0.5, 1.5, n) * 1e-4,
            "big": rng.uniform(0.5, 1.5, n) * 1e-3,
        }
    )
    return q, cost


def test_route_frontier_meets_each_kind_of_target():
    q, cost = _world()
    # budgets: never over, and nearly all of it spent; more money never buys less quality
    last = -1.0
    for per_1k in (0.01, 0.05, 0.2, 0.6):
        r = route_frontier(q, cost, budget_per_1k=per_1k)
        assert r.met and r.mean_cost * 1000 <= per_1k + 1e-9
        assert r.mean_cost * 1000 >= 0.97 * per_1k
        assert r.mean_quality >= last - 1e-12
        last = r.mean_quality
    # quality target: reached, and as cheaply as the bisection can (a bit less misses it)
    r = route_frontier(q, cost, target_quality=0.85)
    assert r.met and r.mean_quality >= 0.85
    cheaper = route_frontier(q, cost, lam=r.lam * 1.5)
    assert cheaper.mean_quality < 0.85 and cheaper.mean_cost <= r.mean_cost
    # share of calls to a named model
    r = route_frontier(q, cost, model_share=("big", 0.25))
    assert r.share["big"] <= 0.25 + 1e-12 and r.share["big"] >= 0.15
    # unreachable target: the best one can do, flagged
    r = route_frontier(q, cost, target_quality=0.999)
    assert not r.met and r.choice.eq(q.idxmax(axis=1)).mean() > 0.9


def test_route_frontier_pool_is_a_choice_not_a_retrain():
    q, cost = _world()
    r = route_frontier(q, cost, budget_per_1k=0.05, pool=["tiny", "mid"])
    assert set(r.choice) <= {"tiny", "mid"} and r.mean_cost * 1000 <= 0.05 + 1e-9
    with pytest.raises(ValueError, match=r"pool model\(s\) \['huge'\]"):
        route_frontier(q, cost, budget_per_1k=0.05, pool=["tiny", "huge"])
    with pytest.raises(ValueError, match="exactly one of"):
        route_frontier(q, cost, budget_per_1k=0.05, target_quality=0.5)
    with pytest.raises(ValueError, match="cost row 1, model 'mid' is not a finite number"):
        route_frontier(q, cost.assign(mid=cost["mid"].where(cost.index != 1)), budget_per_1k=0.05)


def test_frontier_with_no_prompt_signal_mixes_like_the_zero_router():
    # every prompt predicted alike: the policy can only mix two models; the budget is
    # spent exactly, so the mean predicted quality lies on the line between them
    n = 1000
    q = pd.DataFrame({"cheap": np.full(n, 0.6), "dear": np.full(n, 0.9)})
    cost = pd.DataFrame({"cheap": np.full(n, 1e-4), "dear": np.full(n, 1e-3)})
    r = route_frontier(q, cost, budget_per_prompt=5.5e-4)
    assert r.share["dear"] == pytest.approx(0.5, abs=0.002)
    assert r.mean_quality == pytest.approx(0.75, abs=0.001)


def test_policies_name_bad_inputs():
    q = quality([[0.9, 0.8, 0.7, 0.6]])
    with pytest.raises(ValueError, match=r"no price for model\(s\) \['local'\]"):
        cheapest_adequate(q, {k: v for k, v in PRICES.items() if k != "local"}, 0.5)
    with pytest.raises(ValueError, match="price of \\['mixtral'\\] must be"):
        best_under_budget(q, {**PRICES, "mixtral": -1}, 1.0)
    with pytest.raises(ValueError, match="quality row 'p0', model 'llama-8b' is NaN"):
        cheapest_adequate(q.assign(**{"llama-8b": np.nan}), PRICES, 0.5)
    with pytest.raises(ValueError, match=r"target quality must be in \[0, 1\]"):
        cheapest_adequate(q, PRICES, 2)
