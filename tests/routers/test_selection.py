"""Model selection inside a router's training data: the split, the criterion, the grid,
and the ensemble choosing its blend on a world where only some components can learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router_tasks.routers import selection
from router_tasks.routers.ensemble import COMPONENTS, SELECTION_FILE, EnsembleRouter


def test_exact_apgr_hand_computed():
    # strong right on all 4, weak wrong on the two prompts scored highest: a perfect ranking
    s, w = np.ones(4), np.array([0.0, 0.0, 1.0, 1.0])
    # PGR after 0..4 strong calls: 0, .5, 1, 1, 1 -> trapezoid, dx 1/4: (.25 + .75 + 1 + 1) / 4 = 0.75
    assert selection.exact_apgr(np.array([0.9, 0.8, 0.1, 0.2]), s, w) == pytest.approx(0.75)
    # the worst ranking routes the two useless prompts first: 0, 0, 0, .5, 1 -> (0 + 0 + .25 + .75) / 4
    assert selection.exact_apgr(np.array([0.1, 0.2, 0.9, 0.8]), s, w) == pytest.approx(0.25)
    assert np.isnan(selection.exact_apgr(np.array([1.0, 0.0]), np.ones(2), np.ones(2)))


def test_simplex_grid():
    g = selection.simplex_grid(3, 0.25)
    assert len(g) == 15 and np.allclose(g.sum(axis=1), 1) and len({tuple(r) for r in g}) == 15
    assert tuple(g[0]) == (1.0, 0.0, 0.0)


def test_cluster_split_holds_out_whole_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    emb = np.vstack([c + rng.normal(size=(30, 16)) for c in centres])
    val = selection.cluster_split(emb, share=0.25, clusters=8, seed=3)
    assert 0.2 <= val.mean() <= 0.5
    blocks = val.reshape(8, 30)
    assert all(b.all() or not b.any() for b in blocks)  # a topic is all in or all out
    assert np.array_equal(val, selection.cluster_split(emb, share=0.25, clusters=8, seed=3))
    assert not selection.cluster_split(emb[:3]).any()


def _world(n: int) -> pd.DataFrame:
    """Multiple-choice prompts on made-up topics; the weak model fails exactly the ones
    phrased with NOT, which no topic predicts: only the text's form does."""
    topics = ["glorp farming", "zent tides", "quib metallurgy", "plonk cartography", "vrell dialects", "snib orbits"]
    rows = []
    for i in range(n):
        neg = i % 3 == 0
        text = (f"Which of the following is {'NOT ' if neg else ''}true of {topics[i % len(topics)]} "
                f"case {i}?\nA. alpha {i}\nB. beta\nC. gamma\nD. delta\nAnswer:")
        for model, ok in (("strong", True), ("weak", not neg)):
            rows.append(dict(prompt_id=f"p{i}", prompt=text, model=model, quality=float(ok)))
    return pd.DataFrame(rows)


def test_ensemble_chooses_its_blend_on_its_own_training_data(minilm):
    router = EnsembleRouter(["strong", "weak"], "strong", "weak",
                            {"knn_k": 10, "select_clusters": 6, "select_share": 0.34}).fit(_world(180))
    sel = router.selection
    assert sel["selected"] and sel["splits"] == 2 and min(sel["n_validation"]) >= selection.MIN_VALIDATION
    assert sum(sel["blend"].values()) == pytest.approx(1.0) and sel["blend"]["gbt"] == 0.0
    # form, not topic, decides here: the chosen blend ranks every held-out NOT prompt first
    assert sel["validation_apgr"] > 0.8
    q = router.strong_win_rate(["Which of the following is NOT true of zent tides case 999?\nA. a\nB. b\nC. c\nD. d\nAnswer:",
                                "Which of the following is true of zent tides case 999?\nA. a\nB. b\nC. c\nD. d\nAnswer:"])
    assert q[0] > q[1]
    files = {}
    router.save(lambda name, data: files.__setitem__(name, data))
    assert json.loads(files[SELECTION_FILE])["blend"] == sel["blend"]
    assert set(json.loads(files[SELECTION_FILE])["blend"]) == set(COMPONENTS)


def test_ensemble_too_small_to_select_falls_back(router_toy_labels):
    from conftest import ROUTER_STRONG, ROUTER_WEAK

    router = EnsembleRouter([ROUTER_STRONG, ROUTER_WEAK], ROUTER_STRONG, ROUTER_WEAK,
                            {"knn_k": 5, "gbt_min_samples_leaf": 2, "gbt_pca": 4, "gbt_rounds": 30}).fit(router_toy_labels)
    assert router.selection["selected"] is False
    assert router.selection["blend"] == {"knn": 1 / 3, "linear": 1 / 3, "gbt": 1 / 3, "style": 0.0, "lexical": 0.0}
    with pytest.raises(ValueError, match="unknown select_components"):
        EnsembleRouter(["a", "b"], "a", "b", {"select_components": ["knn", "bogus"]})
