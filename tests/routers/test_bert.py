"""BERT (fine-tuned MiniLM classifier) router on the toy labels: learns, round-trips, trains end to end."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import ROUTERS, load_router, save_router
from router_tasks.routers.bert import WEIGHTS_FILE, BertRouter

MODELS = [ROUTER_STRONG, ROUTER_WEAK, "smollm2"]
QUERIES = [ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, "Write a haiku about routers."]
PARAMS = {"epochs": 3, "train_layers": 2, "device": "cpu", "cpu_threads": 1}


@pytest.fixture(scope="module")
def trained(router_toy_labels):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    router = BertRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, PARAMS).fit(router_toy_labels)
    assert torch.equal(torch.rand(3), expected)  # training did not consume the caller's RNG
    return router


def test_registered():
    assert ROUTERS["bert"] is BertRouter and BertRouter.kind == "bert"


def test_learns_hard_vs_easy(trained):
    assert trained.history[-1] < 0.6 * trained.history[0]  # it trained
    q = trained.predict_quality([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert list(q.columns) == MODELS
    assert ((q.to_numpy() >= 0) & (q.to_numpy() <= 1)).all()
    easy, hard = trained.strong_win_rate(None, quality=q)
    assert hard > easy + 0.2
    assert q.loc[0, ROUTER_WEAK] > q.loc[1, ROUTER_WEAK]


def test_save_load_identical_predictions(trained, local_root):
    def compute(ctx):
        save_router(trained, ctx, training={"labels_fingerprint": "toy"})

    ref = run_stage(
        "train", "test", compute, config={"kind": "bert", "params": trained.params}, store=ArtifactStore(local_root)
    )
    store = ArtifactStore(local_root)
    # only the top 2 layers + head are saved (~14 MB), not the whole ~90 MB encoder
    assert len(store.read_bytes(f"{ref['key']}/{WEIGHTS_FILE}")) < 20_000_000
    loaded = load_router(ref, store)
    assert type(loaded) is BertRouter and loaded.meta["kind"] == "bert"
    assert loaded.history == trained.history
    np.testing.assert_array_equal(
        loaded.predict_quality(QUERIES).to_numpy(), trained.predict_quality(QUERIES).to_numpy()
    )
    np.testing.assert_array_equal(loaded.strong_win_rate(QUERIES), trained.strong_win_rate(QUERIES))


def test_train_router_end_to_end(router_toy_labels, router_labels_artifact, local_root):
    from router_tasks.training.train import train_router

    labels_ref = router_labels_artifact(router_toy_labels, local_root)
    ref = train_router(
        labels_ref,
        router_type="bert",
        strong_model=ROUTER_STRONG,
        weak_model=ROUTER_WEAK,
        router_params={"epochs": 1, "train_layers": 1, "cpu_threads": 1},
        use_gpu=False,
        artifact_root=local_root,
    )
    router = load_router(ref, ArtifactStore(local_root))
    assert router.params["device"] == "cpu" and router.params["train_layers"] == 1
    assert router.meta["metrics"]["fit_seconds"] > 0 and len(router.meta["metrics"]["loss_history"]) == 1
    q = router.predict_quality(QUERIES)
    assert q.shape == (3, 3) and list(q.columns) == sorted(MODELS)


def test_bad_params_and_predict_before_fit():
    with pytest.raises(ValueError, match="unknown param"):
        BertRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"layers": 2})
    with pytest.raises(ValueError, match="device"):
        BertRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK, {"device": "tpu"})
    with pytest.raises(RuntimeError, match="before fit"):
        BertRouter(MODELS, ROUTER_STRONG, ROUTER_WEAK).predict_quality(["x"])
