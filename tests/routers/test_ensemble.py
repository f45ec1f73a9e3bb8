"""Ensemble router on the toy labels: the known answer, save/load, determinism, the trees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.routers.ensemble import COMPONENTS, EnsembleRouter
from router_tasks.routers.ensemble_trees import fit_trees, pack_trees
from router_tasks.routers.text_features import FEATURE_NAMES, feature_matrix

MODELS = [ROUTER_STRONG, ROUTER_WEAK, "smollm2"]
QUERIES = [ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, "What is 9 - 3?"]
#: toy-sized: 24 prompts cannot fill the default 40-row leaves or 8 components
PARAMS = {"knn_k": 5, "gbt_min_samples_leaf": 2, "gbt_pca": 4, "gbt_rounds": 30, "linear_c": 1.0}


def fit(labels, **params):
    return EnsembleRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {**PARAMS, **params}).fit(labels)


def test_hard_prompt_needs_the_strong_model_more(router_toy_labels):
    router = fit(router_toy_labels)
    q = router.predict_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert list(q.columns) == MODELS
    assert ((q.to_numpy() >= 0) & (q.to_numpy() <= 1)).all()
    easy, hard = router.strong_win_rate(None, quality=q)
    assert hard > easy + 0.2
    assert q.loc[0, ROUTER_WEAK] > q.loc[1, ROUTER_WEAK]
    assert q.loc[0, "smollm2"] > q.loc[1, "smollm2"]  # labelled on half the prompts only
    assert (q[ROUTER_STRONG] > 0.8).all()  # right everywhere: predicted, not assumed
    # every component on its own already ranks the hard prompt above the easy one
    for name, part in router.component_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY]).items():
        gap = part[:, 0] - part[:, 1]
        assert gap[1] >= gap[0], name


def test_save_load_identical_predictions(router_toy_labels):
    router = fit(router_toy_labels)
    files = {}
    router.save(lambda name, data: files.__setitem__(name, data))
    meta = {"models": MODELS, "strong_model": ROUTER_STRONG, "weak_model": ROUTER_WEAK, "params": router.params}
    loaded = EnsembleRouter.load(files.__getitem__, meta)
    np.testing.assert_array_equal(
        loaded.predict_quality(QUERIES).to_numpy(), router.predict_quality(QUERIES).to_numpy()
    )
    np.testing.assert_array_equal(loaded.strong_win_rate(QUERIES), router.strong_win_rate(QUERIES))


def test_deterministic_and_batch_independent(router_toy_labels):
    a, b = fit(router_toy_labels), fit(router_toy_labels)
    np.testing.assert_array_equal(a.predict_quality(QUERIES).to_numpy(), b.predict_quality(QUERIES).to_numpy())
    one_by_one = np.vstack([a.predict_quality([p]).to_numpy() for p in QUERIES])
    np.testing.assert_allclose(
        one_by_one, a.predict_quality(QUERIES).to_numpy(), rtol=0, atol=1e-6
    )  # float32 BLAS blocking in the kNN part


def test_trees_match_scikit_learn():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    y = (x[:, 0] + x[:, 1] ** 2 + rng.normal(size=len(x)) > 1).astype(int)
    router = EnsembleRouter(["m"], "m", "m", {"gbt_rounds": 25, "gbt_min_samples_leaf": 10})
    router.w = pack_trees([fit_trees(x, y, np.ones(len(y)), router.params)])
    expected = (
        HistGradientBoostingClassifier(
            max_iter=25,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=10,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=0,
        )
        .fit(x, y)
        .decision_function(x)
    )
    np.testing.assert_allclose(router._tree_logits(x)[:, 0], expected, atol=1e-9)


def test_soft_labels_and_one_class_models(router_toy_labels):
    soft = router_toy_labels.copy()
    weak = soft["model"] == ROUTER_WEAK
    soft.loc[weak, "quality"] = np.where(soft.loc[weak, "quality"] > 0.5, 0.75, 0.25)  # judge-like scores
    router = fit(soft)
    q = router.predict_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert q.loc[0, ROUTER_WEAK] > q.loc[1, ROUTER_WEAK]
    # the strong model is right on every prompt: its linear and tree parts are the smoothed base rate
    parts = router.component_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    np.testing.assert_allclose(parts["linear"][:, 0], 25 / 26)
    np.testing.assert_allclose(parts["gbt"][:, 0], 25 / 26)


def test_features_from_text_alone():
    f = feature_matrix(
        [
            "Tom has 3 apples and buys 12 more. He gives 50% away. How many are left?",
            "Which is a prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:",
            "",
        ]
    )
    assert f.shape == (3, len(FEATURE_NAMES))
    col = dict(zip(FEATURE_NAMES, f.T, strict=False))
    assert col["log_numbers"][0] == pytest.approx(np.log1p(3)) and col["has_percent"][0] == 1.0
    assert col["has_choices"].tolist() == [0.0, 1.0, 0.0]
    assert np.isfinite(f).all()


def test_checks(router_toy_labels):
    assert fit(router_toy_labels).predict_quality([]).shape == (0, 3)
    assert set(COMPONENTS) == {"knn", "linear", "gbt", "style", "lexical", "form"}
    with pytest.raises(RuntimeError, match="before fit"):
        EnsembleRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK).predict_quality(["x"])
    with pytest.raises(ValueError, match="unknown param"):
        EnsembleRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"k": 3})
    with pytest.raises(ValueError, match="k must be"):
        EnsembleRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"knn_k": 0})
    with pytest.raises(ValueError, match="form_c must be a number > 0 or a list"):
        EnsembleRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"form_c": [0.01, 0.0]})
    with pytest.raises(ValueError, match="linear_c must be"):
        EnsembleRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"linear_c": []})


# --- the form part on SmolLM2's hidden states (form_embedding) ----------------------------
_FOODS = [
    "lasagne",
    "sourdough bread",
    "miso soup",
    "paella",
    "ratatouille",
    "dumplings",
    "risotto",
    "tiramisu",
    "goulash",
    "falafel",
    "pho",
    "croissants",
    "kimchi",
    "pancakes",
    "guacamole",
    "moussaka",
]
_SPORTS = [
    "badminton",
    "water polo",
    "fencing",
    "curling",
    "rugby",
    "table tennis",
    "lacrosse",
    "rowing",
    "volleyball",
    "cricket",
    "judo",
    "handball",
    "bobsleigh",
    "archery",
    "squash",
    "triathlon",
]
_TEMPLATES = [
    "Give me three tips about {}.",
    "What should a beginner know about {}?",
    "Write a short paragraph on {}.",
    "Explain the history of {} briefly.",
]


def _topic_world() -> pd.DataFrame:
    """Own model names; the weak model fails every cooking question and no sports one, in
    the same wordings: only what the prompt is about tells them apart."""
    import pandas as pd

    rows = []
    for topic_list, weak_ok in ((_FOODS, False), (_SPORTS, True)):
        for item in topic_list:
            for t in _TEMPLATES:
                text = t.format(item)
                for model, ok in (("acme-large", True), ("acme-mini", weak_ok)):
                    rows.append(
                        dict(
                            prompt_id=f"{item}|{t}",
                            prompt=text,
                            model=model,
                            quality=float(ok),
                            score=None,
                            correct=ok,
                            source="test:topics",
                            benchmark=None,
                        )
                    )
    return pd.DataFrame(rows)


def test_form_part_on_smollm2_vectors_learns_topics_and_survives_the_train_stage(
    minilm, router_labels_artifact, local_root
):
    from router_tasks.core.stage import read_manifest
    from router_tasks.core.store import ArtifactStore
    from router_tasks.routers import load_router
    from router_tasks.routers.embeddings import EMBEDDING_MODELS, SMOLLM2_DIM
    from router_tasks.routers.vector_cache import CACHE_PREFIX
    from router_tasks.training.train import train_router

    params = {
        "form_embedding": "smollm2-layer15",
        "select_components": ["form"],
        "knn_k": 10,
        "select_clusters": 6,
        "select_share": 0.34,
    }
    ref = train_router(
        router_labels_artifact(_topic_world(), local_root),
        router_type="ensemble",
        strong_model="acme-large",
        weak_model="acme-mini",
        router_params=params,
        artifact_root=local_root,
    )
    router = load_router(ref, ArtifactStore(local_root))
    assert router.w["frm_coef"].shape[1] == 2 * SMOLLM2_DIM + 2 * len(FEATURE_NAMES)  # SmolLM2's, not MiniLM's
    assert router.w["blend"][COMPONENTS.index("form")] == 1.0
    smol_id = EMBEDDING_MODELS["smollm2-layer15"].model_id
    assert read_manifest(ArtifactStore(local_root), ref)["config"]["identity"]["form_embedding_model"] == smol_id
    assert ArtifactStore(local_root).list(f"{CACHE_PREFIX}/{smol_id}/")  # its vectors cached like MiniLM's

    unseen_food = [t.format(x) for x in ("couscous", "sushi", "gazpacho") for t in _TEMPLATES[:2]]
    unseen_sport = [t.format(x) for x in ("snowboarding", "polo", "wrestling") for t in _TEMPLATES[:2]]
    win = router.strong_win_rate(unseen_food + unseen_sport)
    assert win[: len(unseen_food)].mean() > win[len(unseen_food) :].mean() + 0.1

    with pytest.raises(ValueError, match="form_embedding: unknown embedding model 'glove'"):
        EnsembleRouter(["a", "b"], "a", "b", {"form_embedding": "glove"})


@pytest.mark.parametrize(
    "params",
    [
        {},  # the default parts: knn, linear, style, form (one blend per prompt form)
        {"select": False},  # the equal fallback blend with trees: the reference path scores it
        {"select_components": ["knn", "linear", "style", "form"], "blend_by_form": False},
    ],
)
def test_compiled_scoring_equals_the_reference_path(router_toy_labels, params):
    """The one-prompt path (standardisation folded into the weights, no DataFrame) scores
    what the part-by-part path scores, on single prompts and on a mixed batch."""
    router = fit(router_toy_labels, **params)
    prompts = QUERIES + [
        "Which of the following is NOT a prime?\nA. 2\nB. 3\nC. 4\nD. 5",
        "Statement 1 | Every group is abelian. Statement 2 | 7 is odd.\nA. True, True\nB. False, True",
    ]
    reference = np.clip(router.reference_quality(prompts), 0, 1)
    np.testing.assert_allclose(router.predict_quality_array(prompts), reference, rtol=0, atol=1e-9)
    for i, p in enumerate(prompts):  # one at a time: float32 BLAS blocks the kNN similarities differently
        np.testing.assert_allclose(router.predict_quality([p]).to_numpy()[0], reference[i], rtol=0, atol=1e-6)
        s, w = MODELS.index(ROUTER_STRONG), MODELS.index(ROUTER_WEAK)
        np.testing.assert_allclose(
            router.strong_win_rate([p]), np.clip((reference[i, s] - reference[i, w] + 1) / 2, 0, 1), rtol=0, atol=1e-6
        )
    # the reference path really differs per part: a blend that moved would fail above
    assert np.ptp(reference[:, MODELS.index(ROUTER_WEAK)]) > 0.05
