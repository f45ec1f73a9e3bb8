"""Train stage: artifact contents, reuse, config keying, errors, and a known answer."""

from __future__ import annotations

import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.core.stage import read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import load_router
from router_tasks.training.train import train_router


def test_train_knn_writes_a_loadable_router(router_toy_labels, router_labels_artifact, local_root):
    labels = router_labels_artifact(router_toy_labels, local_root)
    ref = train_router(labels, router_type="knn", router_params={"k": 5}, artifact_root=local_root)
    store = ArtifactStore(local_root)
    assert ref["stage"] == "train" and not ref["reused"]

    files = read_manifest(store, ref)["files"]
    assert {"router.json", "knn.safetensors", "train_prompts.parquet", "data.parquet"} <= set(files)
    trained_on = store.read_parquet(f"{ref['key']}/train_prompts.parquet")
    assert sorted(trained_on["prompt_id"]) == sorted(router_toy_labels["prompt_id"].unique())

    metrics = store.read_parquet(f"{ref['key']}/data.parquet").set_index("model")
    assert metrics.loc[ROUTER_STRONG, "n_prompts"] == 24 and metrics.loc["smollm2", "n_prompts"] == 12
    assert metrics.loc[ROUTER_WEAK, "mean_quality"] == pytest.approx(0.5)

    meta = store.read_json(f"{ref['key']}/router.json")
    assert meta["params"] == {
        "k": 5,
        "temperature": 0.2,
        "prior_weight": 2.0,
        "representation": "minilm",
    }  # defaults resolved
    assert meta["representation"] == "minilm"
    assert meta["models"] == sorted([ROUTER_STRONG, ROUTER_WEAK, "smollm2"])
    assert meta["training_data"]["labels_fingerprint"] == labels["fingerprint"]
    assert meta["training_data"]["n_prompts"] == 24
    assert meta["metrics"]["strong_win_auc"] > 0.9  # in-sample, but it must separate the toy set
    assert meta["embedding_model"].startswith("all-MiniLM-L6-v2")

    router = load_router(ref, store)
    easy, hard = router.strong_win_rate([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert hard > easy + 0.2


def test_rerun_reuses_and_config_changes_the_key(router_toy_labels, router_labels_artifact, local_root):
    labels = router_labels_artifact(router_toy_labels, local_root)
    first = train_router(labels, router_type="random", artifact_root=local_root)
    again = train_router(labels, router_type="random", artifact_root=local_root)
    assert again["reused"] and again["key"] == first["key"]
    other = train_router(labels, router_type="random", router_params={"seed": 1}, artifact_root=local_root)
    assert other["key"] != first["key"]
    explicit = train_router(labels, router_type="random", router_params={"seed": 0}, artifact_root=local_root)
    assert explicit["key"] == first["key"]  # defaults are resolved before keying


def test_train_mf_on_s3(router_toy_labels, router_labels_artifact, s3_root):
    labels = router_labels_artifact(router_toy_labels, s3_root)
    params = {"epochs": 60, "batch_size": 16, "lr": 0.01}
    ref = train_router(labels, router_type="mf", router_params=params, artifact_root=s3_root)
    assert ref["uri"].startswith("s3://")
    router = load_router(ref["uri"], ArtifactStore(s3_root))
    assert router.meta["metrics"]["loss_history"][-1] < router.meta["metrics"]["loss_history"][0]
    easy, hard = router.strong_win_rate([ROUTER_EASY_QUERY, ROUTER_HARD_QUERY])
    assert hard > easy + 0.2


def test_errors_name_the_problem(router_toy_labels, router_labels_artifact, local_root):
    labels = router_labels_artifact(router_toy_labels, local_root)
    with pytest.raises(ValueError, match="unknown router type 'svm'"):
        train_router(labels, router_type="svm", artifact_root=local_root)
    with pytest.raises(ValueError, match="unknown param"):
        train_router(labels, router_type="knn", router_params={"kk": 3}, artifact_root=local_root)
    with pytest.raises(ValueError, match="strong model 'gpt-5' has no labels"):
        train_router(labels, router_type="knn", strong_model="gpt-5", artifact_root=local_root)
    no_quality = router_labels_artifact(router_toy_labels.drop(columns="quality"), local_root)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['quality'\]"):
        train_router(no_quality, router_type="knn", artifact_root=local_root)
