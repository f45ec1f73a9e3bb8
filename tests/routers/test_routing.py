"""Routing policies on constructed cases where the right choice is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_tasks.routers.routing import best_under_budget, cheapest_adequate, route_two, routing_cost

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
    q = quality([
        [0.95, 0.90, 0.85, 0.30],  # llama-8b is the cheapest >= 0.8
        [0.95, 0.60, 0.40, 0.20],  # only gpt-4 clears 0.8
        [0.90, 0.88, 0.70, 0.85],  # the free local model clears it
        [0.70, 0.65, 0.50, 0.10],  # nobody clears 0.8: best predicted quality
    ])
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


def test_best_under_budget_maximises_quality_per_dollar_within_budget():
    q = quality([
        [0.95, 0.90, 0.50, 0.00],  # local is free but useless; per $: mixtral 1.5, llama 2.5
        [0.95, 0.90, 0.10, 0.00],  # per $: llama 0.5 < mixtral 1.5
        [0.95, 0.90, 0.50, 0.40],  # a free model with quality > 0 is best per dollar
    ])
    choice = best_under_budget(q, PRICES, budget_per_prompt=1.0)
    assert choice.tolist() == ["llama-8b", "mixtral", "local"]
    # gpt-4 is never within a $1 budget; a huge budget still prefers value over raw quality
    assert "gpt-4" not in best_under_budget(q, PRICES, 1e9).tolist()
    # nothing fits: the cheapest model
    dear = {"gpt-4": 30.0, "mixtral": 5.0, "llama-8b": 4.0, "local": 3.0}
    assert best_under_budget(q, dear, 1.0).tolist() == ["local"] * 3
    # tokens: $/1M tokens x 100k tokens -> gpt-4 costs $3, mixtral $0.06, llama $0.02
    only_paid = quality([[0.9, 0.4, 0.1, 0.0]])  # per $: 0.3, 6.7, 5, 0
    assert best_under_budget(only_paid, PRICES, 0.1, tokens_per_prompt=100_000).tolist() == ["mixtral"]
    assert best_under_budget(only_paid, PRICES, 0.05, tokens_per_prompt=100_000).tolist() == ["llama-8b"]
    assert routing_cost(pd.Series(["gpt-4", "mixtral"]), PRICES, tokens_per_prompt=100_000) == pytest.approx(3.06)


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
