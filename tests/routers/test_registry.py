"""Registry: save -> load gives identical predictions; every way of naming a router works."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.core.stage import MANIFEST, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import ROUTERS, load_router, make_router, save_router

MODELS = [ROUTER_STRONG, ROUTER_WEAK, "smollm2"]
QUERIES = [ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, "Write a haiku about routers."]
FAST = {"knn": {"k": 5}, "mf": {"epochs": 5, "batch_size": 16}, "random": {"seed": 7}}


def saved(kind, labels, root, params=None):
    """Train `kind` and save it as a train artifact through the real stage contract."""
    router = make_router(kind, MODELS, ROUTER_STRONG, ROUTER_WEAK, params or FAST[kind]).fit(labels)

    def compute(ctx):
        save_router(router, ctx, training={"labels_fingerprint": "toy"}, metrics={"note": 1})

    return router, run_stage(
        "train", "test", compute, config={"kind": kind, "params": router.params}, store=ArtifactStore(root)
    )


def test_registry_names_every_router():
    assert {"knn", "mf", "random"} <= set(ROUTERS)
    for kind, cls in ROUTERS.items():
        assert cls.kind == kind
    with pytest.raises(ValueError, match="unknown router type 'svm'.*knn"):
        make_router("svm", MODELS, ROUTER_STRONG, ROUTER_WEAK)


@pytest.mark.parametrize("kind", sorted(FAST))  # other kinds test their own round trip
def test_save_load_identical_predictions(kind, router_toy_labels, local_root):
    router, ref = saved(kind, router_toy_labels, local_root)
    loaded = load_router(ref, ArtifactStore(local_root))
    assert type(loaded) is type(router)
    np.testing.assert_array_equal(
        loaded.predict_quality(QUERIES).to_numpy(), router.predict_quality(QUERIES).to_numpy()
    )
    np.testing.assert_array_equal(loaded.strong_win_rate(QUERIES), router.strong_win_rate(QUERIES))
    meta = loaded.meta
    assert meta["kind"] == kind and meta["models"] == MODELS
    assert (meta["strong_model"], meta["weak_model"]) == (ROUTER_STRONG, ROUTER_WEAK)
    assert meta["params"] == router.params and meta["training_data"] == {"labels_fingerprint": "toy"}
    assert meta["versions"]["numpy"] and meta["metrics"] == {"note": 1}
    assert loaded.artifact_key == ref["key"]


def test_every_way_to_name_a_router(router_toy_labels, local_root, tmp_path):
    store = ArtifactStore(local_root)
    _, ref = saved("knn", router_toy_labels, local_root)
    expected = load_router(ref, store).predict_quality(QUERIES).to_numpy()
    names = [ref["key"], ref["uri"], ref["uri"] + "/router.json", json.dumps(ref), "file://" + ref["uri"]]
    for name in names:
        np.testing.assert_array_equal(load_router(name, store).predict_quality(QUERIES).to_numpy(), expected)
    # a URI in another root is read from that root, whatever the default store is
    other = load_router(ref["uri"], ArtifactStore(str(tmp_path / "elsewhere")))
    assert other.artifact_key == ref["key"]

    with pytest.raises(FileNotFoundError, match="no champion router.*publish"):
        load_router("champion", store)
    store.write_json("champion/CHAMPION.json", {"router": ref, "score": 0.5})
    champion = load_router("champion", store)
    assert champion.artifact_key == ref["key"]
    np.testing.assert_array_equal(champion.predict_quality(QUERIES).to_numpy(), expected)


def test_bad_references(router_toy_labels, local_root):
    store = ArtifactStore(local_root)
    _, ref = saved("random", router_toy_labels, local_root)
    with pytest.raises(ValueError, match="expected a train artifact"):
        load_router({**ref, "stage": "evaluate"}, store)
    with pytest.raises(ValueError, match="stages/train"):
        load_router("not-a-router", store)
    store.delete(f"{ref['key']}/{MANIFEST}")  # an interrupted train run is never loaded
    with pytest.raises(FileNotFoundError, match="not a complete train artifact"):
        load_router(ref, store)


def test_random_router_is_per_prompt_deterministic():
    r = make_router("random", MODELS, ROUTER_STRONG, ROUTER_WEAK, {"seed": 3})
    a = r.predict_quality(QUERIES).to_numpy()
    b = r.predict_quality(QUERIES[::-1]).to_numpy()[::-1]
    np.testing.assert_array_equal(a, b)
    other = make_router("random", MODELS, ROUTER_STRONG, ROUTER_WEAK, {"seed": 4}).predict_quality(QUERIES)
    assert not np.array_equal(a, other.to_numpy())
    many = r.strong_win_rate([f"prompt {i}" for i in range(2000)])
    assert 0.45 < many.mean() < 0.55 and many.min() >= 0 and many.max() <= 1


def test_gpu_routers_and_where_each_kind_trains():
    from router_tasks.routers import GPU_ROUTERS, ROUTERS, needs_gpu
    from router_tasks.training.train import train_device

    assert GPU_ROUTERS == {"causal_llm"} == {k for k in ROUTERS if needs_gpu(k)}
    assert {k: train_device(k) for k in ROUTERS} == {k: "gpu" if k == "causal_llm" else "cpu" for k in ROUTERS}
    assert train_device("causal_llm", use_gpu=False) == "cpu"  # use_gpu off: the normal task, on the CPU
    with pytest.raises(ValueError, match="unknown router type"):
        needs_gpu("gpt")
