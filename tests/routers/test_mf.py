"""MF router on the toy labels: it learns the known answer, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.routers import MFRouter

MODELS = [ROUTER_STRONG, ROUTER_WEAK, "smollm2"]
PARAMS = {"epochs": 60, "batch_size": 16, "lr": 0.01}


def test_learns_hard_vs_easy(router_toy_labels):
    router = MFRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, PARAMS).fit(router_toy_labels)
    assert router.history[-1] < 0.5 * router.history[0]  # it trained
    q = router.predict_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert list(q.columns) == MODELS
    easy, hard = router.strong_win_rate(None, quality=q)
    assert hard > easy + 0.2
    assert q.loc[0, ROUTER_WEAK] > q.loc[1, ROUTER_WEAK]


def test_same_seed_same_model_and_global_rng_untouched(router_toy_labels):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = MFRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {**PARAMS, "epochs": 5}).fit(router_toy_labels)
    assert torch.equal(torch.rand(3), expected)  # training did not consume the caller's RNG
    b = MFRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {**PARAMS, "epochs": 5}).fit(router_toy_labels)
    c = MFRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {**PARAMS, "epochs": 5, "seed": 1}).fit(router_toy_labels)
    pa, pb, pc = (r.predict_quality([ROUTER_HARD_QUERY]).to_numpy() for r in (a, b, c))
    np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="before fit"):
        MFRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK).predict_quality(["x"])
