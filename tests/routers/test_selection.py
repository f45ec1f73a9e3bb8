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
        text = (
            f"Which of the following is {'NOT ' if neg else ''}true of {topics[i % len(topics)]} "
            f"case {i}?\nA. alpha {i}\nB. beta\nC. gamma\nD. delta\nAnswer:"
        )
        for model, ok in (("strong", True), ("weak", not neg)):
            rows.append(dict(prompt_id=f"p{i}", prompt=text, model=model, quality=float(ok)))
    return pd.DataFrame(rows)


def test_ensemble_chooses_its_blend_on_its_own_training_data(minilm):
    router = EnsembleRouter(
        ["strong", "weak"], "strong", "weak", {"knn_k": 10, "select_clusters": 6, "select_share": 0.34}
    ).fit(_world(180))
    sel = router.selection
    assert sel["selected"] and sel["splits"] == 2 and min(sel["n_validation"]) >= selection.MIN_VALIDATION
    assert sum(sel["blend"].values()) == pytest.approx(1.0) and sel["blend"]["gbt"] == 0.0
    # form, not topic, decides here: the chosen blend ranks every held-out NOT prompt first
    assert sel["validation_apgr"] > 0.8
    q = router.strong_win_rate(
        [
            "Which of the following is NOT true of zent tides case 999?\nA. a\nB. b\nC. c\nD. d\nAnswer:",
            "Which of the following is true of zent tides case 999?\nA. a\nB. b\nC. c\nD. d\nAnswer:",
        ]
    )
    assert q[0] > q[1]
    files = {}
    router.save(lambda name, data: files.__setitem__(name, data))
    assert json.loads(files[SELECTION_FILE])["blend"] == sel["blend"]
    assert set(json.loads(files[SELECTION_FILE])["blend"]) == set(COMPONENTS)


def test_ensemble_too_small_to_select_falls_back(router_toy_labels):
    from conftest import ROUTER_STRONG, ROUTER_WEAK

    router = EnsembleRouter(
        [ROUTER_STRONG, ROUTER_WEAK],
        ROUTER_STRONG,
        ROUTER_WEAK,
        {"knn_k": 5, "gbt_min_samples_leaf": 2, "gbt_pca": 4, "gbt_rounds": 30},
    ).fit(router_toy_labels)
    assert router.selection["selected"] is False
    assert router.selection["blend"] == {
        "knn": 1 / 3,
        "linear": 1 / 3,
        "gbt": 1 / 3,
        "style": 0.0,
        "lexical": 0.0,
        "form": 0.0,
    }
    with pytest.raises(ValueError, match="unknown select_components"):
        EnsembleRouter(["a", "b"], "a", "b", {"select_components": ["knn", "bogus"]})


def _two_form_world(n: int) -> pd.DataFrame:
    """Multiple-choice and free-form prompts on made-up topics, each about an ancient or a
    modern case; the weak model fails ancient cases with options and modern ones without.
    Any topic may be held out: the rule is in the form and the era, not the topic. One set
    of embedding weights for both forms can only average the era's two opposite effects;
    the form component has weights per form."""
    topics = ["glorp farming", "zent tides", "quib metallurgy", "plonk cartography", "vrell dialects", "snib orbits"]
    rows = []
    for i in range(n):
        topic, era = topics[i % len(topics)], ("ancient", "modern")[(i // len(topics)) % 2]
        mc = (i // (2 * len(topics))) % 2 == 0
        text = (
            f"Which of the following holds for {era} {topic}, case {i}?\nA. alpha\nB. beta\nC. gamma\nD. delta\nAnswer:"
            if mc
            else f"Work out the {era} {topic} total for case {i}, step by step."
        )
        weak_fails = (era == "ancient") == mc
        for model, ok in (("strong", True), ("weak", not weak_fails)):
            rows.append(dict(prompt_id=f"p{i}", prompt=text, model=model, quality=float(ok)))
    return pd.DataFrame(rows)


def test_ensemble_chooses_c_and_the_form_component_inside_fit(minilm):
    labels = _two_form_world(240)
    params = {
        "knn_k": 10,
        "select_clusters": 6,
        "select_share": 0.34,
        "select_components": ["linear", "form"],
        # 1e-6 is so strong a penalty that the component predicts nearly nothing
        "linear_c": [1e-6, 1.0],
        "form_c": [1e-6, 1.0],
    }
    router = EnsembleRouter(["strong", "weak"], "strong", "weak", params).fit(labels)
    sel = router.selection
    assert sel["selected"] and sel["c"]["form"] == 1.0
    assert sel["component_apgr"]["form"] > sel["component_apgr"]["linear"] + 0.05
    assert sel["blend"]["form"] > sel["blend"]["linear"]
    q = router.strong_win_rate(
        [
            (
                "Which of the following holds for ancient brix weaving, case 9999?\n"
                "A. alpha\nB. beta\nC. gamma\nD. delta\nAnswer:"
            ),
            "Work out the ancient brix weaving total for case 9999, step by step.",
            (
                "Which of the following holds for modern brix weaving, case 9999?\n"
                "A. alpha\nB. beta\nC. gamma\nD. delta\nAnswer:"
            ),
            "Work out the modern brix weaving total for case 9999, step by step.",
        ]
    )
    assert q[0] > q[1] and q[3] > q[2]
    # a single value is used as given, no choice made
    one = EnsembleRouter(["strong", "weak"], "strong", "weak", {**params, "linear_c": 0.5, "form_c": 0.5}).fit(labels)
    assert one.selection["c"]["linear"] == 0.5 and one.selection["c"]["form"] == 0.5


def _mixed_form_world(n: int) -> pd.DataFrame:
    """Multiple-choice questions that the weak model fails when phrased with NOT (only the
    question form tells), and free-form requests it fails when about an ancient case (the
    wording's meaning tells; "ancient" and "current" are equally long, so the text
    features cannot)."""
    topics = ["glorp farming", "zent tides", "quib metallurgy", "plonk cartography", "vrell dialects", "snib orbits"]
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        if i % 2 == 0:
            neg = (i // len(topics)) % 3 == 0  # independent of the topic, i % 6
            text = (
                f"Which of the following is {'NOT ' if neg else ''}true of {topic} case {i}?"
                f"\nA. alpha {i}\nB. beta\nC. gamma\nD. delta\nAnswer:"
            )
            weak_ok = not neg
        else:
            era = ("ancient", "current")[(i // len(topics)) % 2]
            text = f"Write a short note about the {era} {topic}, case {i}."
            weak_ok = era == "current"
        for model, ok in (("strong", True), ("weak", weak_ok)):
            rows.append(dict(prompt_id=f"p{i}", prompt=text, model=model, quality=float(ok)))
    return pd.DataFrame(rows)


def test_ensemble_chooses_a_blend_per_prompt_form(minilm):
    params = {
        "knn_k": 10,
        "select_clusters": 6,
        "select_share": 0.34,
        "select_components": ["linear", "style"],
        "linear_c": 1.0,
    }
    labels = _mixed_form_world(360)
    router = EnsembleRouter(["strong", "weak"], "strong", "weak", params).fit(labels)
    by_form = router.selection["by_form"]
    assert set(by_form) == {"multiple_choice", "free_form"}
    assert min(by_form["free_form"]["n_validation"]) >= selection.MIN_VALIDATION
    # the style features say nothing about the free-form rule: that form's blend leaves them out
    assert by_form["free_form"]["blend"]["style"] == 0.0 and by_form["free_form"]["blend"]["linear"] == 1.0
    assert by_form["multiple_choice"]["blend"] != by_form["free_form"]["blend"]
    q = router.strong_win_rate(
        [
            "Which of the following is NOT true of brix weaving case 9999?\nA. a\nB. b\nC. c\nD. d\nAnswer:",
            "Which of the following is true of brix weaving case 9999?\nA. a\nB. b\nC. c\nD. d\nAnswer:",
            "Write a short note about the ancient brix weaving, case 9999.",
            "Write a short note about the current brix weaving, case 9999.",
        ]
    )
    assert q[0] > q[1] and q[2] > q[3]
    # off: one blend for every prompt, as before
    one = EnsembleRouter(["strong", "weak"], "strong", "weak", {**params, "blend_by_form": False}).fit(labels)
    assert "by_form" not in one.selection
    assert np.array_equal(one.w["blend_multiple_choice"], one.w["blend_free_form"])
