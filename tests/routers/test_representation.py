"""Prompt representations: the static and int8 tables against the libraries they come from,
a router's representation through train/save/load, its train key, and the one clear error
when a saved router's representation cannot be built."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY
from router_tasks.core.prompts import normalize_prompt
from router_tasks.core.stage import read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import embeddings, load_router, make_router, static_embeddings
from router_tasks.routers.embeddings import Embedder
from router_tasks.training.train import train_router

pytestmark = pytest.mark.slow  # the first run on a machine builds the static table (1-2 min)

TEXTS = [
    "What is 2 + 2?",
    "What  is 2 +\n2?",
    "How much is two plus two?",
    "Prove the spectral theorem for compact operators.",
    "Ünïcödé façade, naïve café",
    "[unused1] ###",
    "",
]


@pytest.fixture(scope="module")
def static_table():
    return static_embeddings.load_static(embeddings.model_path(), embeddings.STATIC_MODEL_ID)


def test_static_vectors_are_model2vecs_and_mean_something(static_table):
    """Our numpy encoder reads the table as model2vec's own StaticModel does."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    ours = Embedder(model="minilm-static")(TEXTS)
    assert ours.shape == (len(TEXTS), 256) and ours.dtype == np.float32
    theirs = StaticModel(
        vectors=static_table.table,
        normalize=True,
        tokenizer=Tokenizer.from_file(str(static_table.folder / "tokenizer.json")),
    )
    expected = theirs.encode([normalize_prompt(t) for t in TEXTS], use_multiprocessing=False)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours[:-1], axis=1), 1.0, atol=1e-5)
    assert not ours[-1].any()  # no token at all: the zero vector, not NaN
    np.testing.assert_array_equal(ours[0], ours[1])  # whitespace variants: one prompt
    assert ours[0] @ ours[2] > ours[0] @ ours[3] + 0.1
    assert len(static_table.sha256) == 64


def test_int8_vectors_stay_close_to_minilms(minilm):
    texts = [t for t in TEXTS if t.strip()] + ["Name a fruit that is yellow.", "Derive the Black-Scholes equation."]
    int8 = Embedder(model="minilm-int8")(texts)
    full = Embedder(use_seed=False)(texts)
    cos = (int8 * full).sum(axis=1)
    assert cos.min() > 0.97, cos
    # a prompt's vector does not depend on what it is embedded with
    alone = Embedder(model="minilm-int8", cache_bytes=0)([texts[3]])
    np.testing.assert_array_equal(alone[0], int8[3])


@pytest.mark.parametrize("kind", ["knn", "ensemble"])
def test_a_router_trained_on_a_representation_is_served_with_it(
    router_toy_labels, router_labels_artifact, local_root, kind
):
    labels = router_labels_artifact(router_toy_labels, local_root)
    params = {"knn": {"k": 5}, "ensemble": {"knn_k": 5, "linear_c": 1.0}}[kind]
    minilm = train_router(labels, router_type=kind, router_params=params, artifact_root=local_root)
    static = train_router(
        labels, router_type=kind, router_params={**params, "representation": "minilm-static"}, artifact_root=local_root
    )
    store = ArtifactStore(local_root)
    assert static["key"] != minilm["key"]  # the representation is part of the train key
    identity = read_manifest(store, static)["config"]["identity"]
    assert identity["embedding_model"] == embeddings.STATIC_MODEL_ID

    meta = store.read_json(f"{static['key']}/router.json")
    assert meta["representation"] == "minilm-static" and meta["embedding_model"] == embeddings.STATIC_MODEL_ID
    assert meta["representation_sha256"] == Embedder(model="minilm-static").model.weights_sha256()
    assert store.read_json(f"{minilm['key']}/router.json")["representation"] == "minilm"

    router = load_router(static, store)
    assert router.representation == "minilm-static" and router.embedder.model_id == embeddings.STATIC_MODEL_ID
    queries = [ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, "What is 6 + 1?"]
    easy, hard, _ = router.strong_win_rate(queries)
    assert hard > easy + 0.1

    # the same router built in this process scores what the saved one scores
    fresh = make_router(kind, meta["models"], meta["strong_model"], meta["weak_model"], meta["params"])
    fresh.fit(router_toy_labels)
    np.testing.assert_allclose(fresh.strong_win_rate(queries), router.strong_win_rate(queries), atol=1e-6)

    # an embedder for another model is re-pointed (the gateway hands in a plain Embedder(None))
    router.embedder = Embedder(None)
    assert router.embedder.model.name == "minilm-static"
    np.testing.assert_allclose(router.strong_win_rate(queries), fresh.strong_win_rate(queries), atol=1e-6)


def _saved_knn(router_toy_labels, router_labels_artifact, local_root, representation):
    labels = router_labels_artifact(router_toy_labels, local_root)
    ref = train_router(
        labels, router_type="knn", router_params={"k": 5, "representation": representation}, artifact_root=local_root
    )
    return ref, ArtifactStore(local_root)


def test_a_representation_this_install_does_not_know_is_one_clear_error(
    router_toy_labels, router_labels_artifact, local_root
):
    ref, store = _saved_knn(router_toy_labels, router_labels_artifact, local_root, "minilm")
    meta = store.read_json(f"{ref['key']}/router.json")
    meta["params"]["representation"] = "glove-300"  # e.g. written by a newer version
    weights = store.read_bytes(f"{ref['key']}/knn.safetensors")

    def copy(ctx):
        ctx.write_file("knn.safetensors", weights)
        ctx.write_file("router.json", json.dumps(meta).encode())

    newer = run_stage("train", "test", copy, config={"from": ref["key"]}, store=store)
    with pytest.raises(RuntimeError, match=r"representation 'glove-300', which cannot be built here.*minilm-static"):
        load_router(newer, store)


def test_a_representation_that_cannot_be_built_is_one_clear_error(
    router_toy_labels, router_labels_artifact, local_root, tmp_path, monkeypatch
):
    ref, store = _saved_knn(router_toy_labels, router_labels_artifact, local_root, "minilm-static")
    # a machine without the built table and without model2vec
    monkeypatch.setenv("TELA_MODEL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(static_embeddings, "_loaded", {})
    monkeypatch.setitem(sys.modules, "model2vec", None)
    monkeypatch.setitem(sys.modules, "model2vec.distill", None)
    with pytest.raises(RuntimeError, match=r"'minilm-static', which cannot be built here: .*model2vec"):
        load_router(ref, store)


def test_params_name_a_known_representation():
    with pytest.raises(ValueError, match="unknown representation 'word2vec'"):
        make_router("knn", ["a", "b"], "a", "b", {"representation": "word2vec"})
    assert make_router("random", ["a", "b"], "a", "b").representation is None
    assert make_router("mf", ["a", "b"], "a", "b").representation == "minilm"


@pytest.mark.parametrize("kind", ["knn", "ensemble"])
def test_a_fitted_static_representation_is_fitted_saved_and_served(
    router_toy_labels, router_labels_artifact, local_root, kind
):
    """minilm-static-fit: the static table's tokens refitted to MiniLM's vectors of the
    training prompts, inside the router's fit; stored with the router and served from it."""
    labels = router_labels_artifact(router_toy_labels, local_root)
    params = {"knn": {"k": 5}, "ensemble": {"knn_k": 5, "linear_c": 1.0}}[kind]
    ref = train_router(
        labels,
        router_type=kind,
        router_params={**params, "representation": "minilm-static-fit"},
        artifact_root=local_root,
    )
    store = ArtifactStore(local_root)
    assert "representation.safetensors" in read_manifest(store, ref)["files"]
    router = load_router(ref, store)
    assert router.representation == "minilm-static-fit"
    texts = sorted(router_toy_labels["prompt"].unique())
    fitted, minilm = router.embed(texts), Embedder()(texts)
    plain = Embedder(model="minilm-static")(texts)
    # fitted on these very prompts: much closer to MiniLM's vectors than the distilled table's
    assert fitted.shape == minilm.shape and (fitted * minilm).sum(axis=1).mean() > 0.9
    queries = [ROUTER_EASY_QUERY, ROUTER_HARD_QUERY]
    easy, hard = router.strong_win_rate(queries)
    assert hard > easy + 0.1
    fresh = make_router(kind, router.models, router.strong_model, router.weak_model, router.params)
    fresh.fit(router_toy_labels)
    np.testing.assert_allclose(fresh.strong_win_rate(queries), router.strong_win_rate(queries), atol=1e-6)
    router.embedder = Embedder(None)  # as the gateway does: the fitted table stays
    np.testing.assert_allclose(router.strong_win_rate(queries), [easy, hard], atol=1e-9)
    assert plain.shape[1] == 256
