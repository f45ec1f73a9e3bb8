"""kNN router on the toy labels: a known answer, the prior, and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROUTER_EASY, ROUTER_EASY_QUERY, ROUTER_HARD, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.routers import KnnRouter

MODELS = [ROUTER_STRONG, ROUTER_WEAK, "smollm2"]


def fit(labels, **params):
    return KnnRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, params).fit(labels)


def test_hard_prompt_needs_the_strong_model_more(router_toy_labels):
    router = fit(router_toy_labels, k=5)
    q = router.predict_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert list(q.columns) == MODELS
    assert ((q.to_numpy() >= 0) & (q.to_numpy() <= 1)).all()
    easy, hard = router.strong_win_rate([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY], quality=q)
    assert hard > easy + 0.2
    assert q.loc[0, ROUTER_WEAK] > 0.8 and q.loc[1, ROUTER_WEAK] < 0.4
    # smollm2 has labels for half the prompts only: it still gets a sensible prediction
    assert q.loc[0, "smollm2"] > q.loc[1, "smollm2"]


def test_training_prompt_recovers_its_neighbourhood(router_toy_labels):
    router = fit(router_toy_labels, k=3, prior_weight=0.0)
    q = router.predict_quality([ROUTER_HARD[0], ROUTER_EASY[0]])
    assert q.loc[0, ROUTER_WEAK] < 0.2 and q.loc[1, ROUTER_WEAK] > 0.8
    np.testing.assert_allclose(q[ROUTER_STRONG], 1.0)  # the strong model is right everywhere


def test_prior_weight_pulls_towards_the_model_mean(router_toy_labels):
    q = fit(router_toy_labels, k=3, prior_weight=1e6).predict_quality([ROUTER_HARD_QUERY])
    assert q.loc[0, ROUTER_WEAK] == pytest.approx(0.5, abs=1e-3)  # weak is right on half


def test_predict_empty_and_params_checked(router_toy_labels):
    assert fit(router_toy_labels).predict_quality([]).shape == (0, 3)
    with pytest.raises(ValueError, match="unknown param"):
        KnnRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"neighbours": 3})
    with pytest.raises(ValueError, match="k must be"):
        KnnRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"k": 0})


def test_bad_quality_names_the_row(router_toy_labels):
    bad = router_toy_labels.copy()
    bad.loc[3, "quality"] = 1.5
    with pytest.raises(ValueError, match="row 3 .*outside"):
        fit(bad)
