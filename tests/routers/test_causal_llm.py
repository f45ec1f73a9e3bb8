"""Causal-LLM classifier router on the tiny in-code model (no hub, CPU, seconds).

Known answer: on "hard ..." prompts only the strong model is right, on "easy ..." ones
both are. After training, an unseen hard prompt must get a higher strong-win rate than an
unseen easy one, and the weak model a lower predicted quality on it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.stage import read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import load_router, router_class
from router_tasks.routers.causal_llm.labels import (
    LABEL_TOKENS,
    class_weights,
    expected_quality,
    prob_at_least,
    quality_to_class,
)
from router_tasks.routers.causal_llm.router import CausalLLMRouter
from router_tasks.training.train import train_router

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
MODELS = [STRONG, WEAK]
TOPICS = ["cats", "rivers", "stars", "bread", "trains", "music", "glass", "roses", "chess", "clouds", "salt", "kites"]
QUERIES = ["easy question about lamps", "hard proof about lamps", "easy question about boats", "hard proof about boats"]
# small and fast: ~4 s of training on a busy 2-core machine
FAST = {"base_model": "tiny", "epochs": 12, "batch_size": 16, "lr": 0.005, "max_length": 48, "warmup_ratio": 0.1}


def toy_labels() -> pd.DataFrame:
    rows = []
    for i, topic in enumerate(TOPICS):
        for kind, weak_ok in (("easy question", 1.0), ("hard proof", 0.0)):
            text = f"{kind} about {topic}"
            pid = f"{kind[0]}{i}"
            rows.append(dict(prompt_id=pid, prompt=text, model=STRONG, quality=1.0))
            rows.append(dict(prompt_id=pid, prompt=text, model=WEAK, quality=weak_ok))
    df = pd.DataFrame(rows)
    df["score"] = pd.array([None] * len(df), dtype="Int64")
    df["correct"] = df["quality"] > 0.5
    df["source"], df["benchmark"] = "test:toy", None
    return df


@pytest.fixture(scope="module")
def trained():
    return CausalLLMRouter(MODELS, STRONG, WEAK, FAST).fit(toy_labels())


def test_quality_class_and_expectation_mappings():
    assert quality_to_class([0.0, 0.25, 0.5, 0.75, 1.0]).tolist() == [0, 1, 2, 3, 4]
    assert quality_to_class([0.125, 0.124, 0.875]).tolist() == [1, 0, 4]  # halves round up
    probs = np.eye(5)
    np.testing.assert_allclose(expected_quality(probs), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(expected_quality([[0.5, 0, 0, 0, 0.5]]), [0.5])
    np.testing.assert_allclose(prob_at_least([[0.1, 0.2, 0.3, 0.25, 0.15]], 4), [0.4])
    w = class_weights(np.array([4, 4, 4, 0]), cap=10.0)
    assert w[0] == pytest.approx(2.0) and w[4] == pytest.approx(2 / 3)  # rare class weighs more
    assert class_weights(np.array([4] * 99 + [0]), cap=5.0)[0] == 5.0  # capped


def test_params_are_validated():
    with pytest.raises(ValueError, match="unknown param"):
        CausalLLMRouter(MODELS, STRONG, WEAK, {"lora_rank": 8})
    with pytest.raises(ValueError, match="finetune must be one of"):
        CausalLLMRouter(MODELS, STRONG, WEAK, {"finetune": "qlora"})
    with pytest.raises(RuntimeError, match="predict before fit"):
        CausalLLMRouter(MODELS, STRONG, WEAK, FAST).predict_quality(["hi"])


def test_learns_the_known_answer(trained):
    assert trained.history[-1] < trained.history[0] * 0.5
    q = trained.predict_quality(QUERIES)
    assert list(q.columns) == MODELS and ((q >= 0) & (q <= 1)).all().all()
    win = trained.strong_win_rate(QUERIES, quality=q)
    easy, hard = win[[0, 2]], win[[1, 3]]
    assert hard.min() > easy.max() + 0.2, (easy, hard)
    assert (q.loc[[1, 3], WEAK].to_numpy() < q.loc[[0, 2], WEAK].to_numpy() - 0.2).all()
    assert (q[STRONG] > 0.6).all()  # the strong model was right everywhere
    probs = trained.predict_probs(QUERIES)
    assert probs.shape == (4, 2, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    stats = trained.train_stats
    assert stats["examples"] == 48 and stats["class_counts"] == [12, 0, 0, 0, 36] and stats["tokens"] > 0


def test_inputs_fit_max_length_and_keep_the_model_name(trained):
    long = "hard proof about " + "very " * 500 + "lamps"
    ids = trained._encode([long, "easy question about cats"], [WEAK, STRONG])
    assert max(map(len, ids)) <= FAST["max_length"]
    assert trained.tokenizer.decode(ids[0]).rstrip().endswith(f"Model: {WEAK}\nRating:")
    # the label tokens are single added tokens, so the classifier can also emit them
    assert trained.tokenizer.convert_tokens_to_ids(list(LABEL_TOKENS)) == trained.label_ids
    assert len(set(trained.label_ids)) == 5


def test_padding_does_not_change_a_prompts_prediction(trained):
    together = trained.predict_quality(["easy question about lamps", "hard proof about " + "lamps " * 6])
    alone = trained.predict_quality(["easy question about lamps"])
    np.testing.assert_allclose(together.iloc[0].to_numpy(), alone.iloc[0].to_numpy(), atol=1e-5)


def test_lora_layers_adapts_only_the_top_layers():
    router = CausalLLMRouter(MODELS, STRONG, WEAK, {**FAST, "lora_layers": 1})
    router._prepare_base()
    router._apply_lora()
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in router.model.named_parameters() if "lora_A" in n}
    assert adapted == {"1"}  # tiny has layers 0 and 1
    trainable = [n for n, t in router.model.named_parameters() if t.requires_grad]
    assert any("lm_head" in n and "trainable_tokens" in n for n in trainable)  # label output rows train
    # inputs never hold label tokens, so nothing below the adapted layers needs a gradient
    import torch

    ids = torch.tensor(router._encode(["hard proof about cats"], [WEAK]))
    assert not router.model.get_input_embeddings()(ids).requires_grad


def test_save_load_identical_predictions(trained):
    files: dict[str, bytes] = {}
    trained.save(files.__setitem__)
    assert {"causal_llm.json", "causal_llm_adapter.safetensors"} <= set(files)
    meta = {"models": MODELS, "strong_model": STRONG, "weak_model": WEAK, "params": trained.params}
    loaded = CausalLLMRouter.load(files.__getitem__, meta)
    np.testing.assert_array_equal(
        loaded.predict_quality(QUERIES).to_numpy(), trained.predict_quality(QUERIES).to_numpy()
    )
    assert loaded.history == trained.history

    saved = json.loads(files["causal_llm.json"])
    with pytest.raises(ValueError, match="prompt template v0"):
        CausalLLMRouter.load(
            {**files, "causal_llm.json": json.dumps({**saved, "template_version": "0"}).encode()}.__getitem__, meta
        )
    with pytest.raises(ValueError, match="label token ids"):
        CausalLLMRouter.load(
            {
                **files,
                "causal_llm.json": json.dumps({**saved, "label_token_ids": [1, 2, 3, 4, 5]}).encode(),
            }.__getitem__,
            meta,
        )


def test_full_finetune_and_resample_save_load():
    params = {
        **FAST,
        "finetune": "full",
        "lr": 0.001,
        "rebalance": "resample",
        "max_steps": 3,
        "gradient_checkpointing": True,
    }
    router = CausalLLMRouter(MODELS, STRONG, WEAK, params).fit(toy_labels())
    assert router.train_stats["steps"] == 3
    files: dict[str, bytes] = {}
    router.save(files.__setitem__)
    assert "causal_llm_model.safetensors" in files and "causal_llm_adapter.safetensors" not in files
    meta = {"models": MODELS, "strong_model": STRONG, "weak_model": WEAK, "params": router.params}
    loaded = CausalLLMRouter.load(files.__getitem__, meta)
    np.testing.assert_array_equal(
        loaded.predict_quality(QUERIES).to_numpy(), router.predict_quality(QUERIES).to_numpy()
    )


def test_train_stage_end_to_end(router_labels_artifact, local_root):
    labels = router_labels_artifact(toy_labels(), local_root)
    ref = train_router(labels, router_type="causal_llm", router_params=FAST, artifact_root=local_root)
    store = ArtifactStore(local_root)
    files = read_manifest(store, ref)["files"]
    assert {"router.json", "causal_llm.json", "causal_llm_adapter.safetensors", "data.parquet"} <= set(files)
    meta = store.read_json(f"{ref['key']}/router.json")
    assert meta["kind"] == "causal_llm" and meta["params"]["base_model"] == "tiny"
    assert meta["params"]["lora_r"] == 16  # defaults resolved into the artifact
    assert meta["metrics"]["strong_win_auc"] > 0.9
    assert meta["metrics"]["loss_history"][-1] < meta["metrics"]["loss_history"][0]

    router = load_router(ref, store)
    easy, hard = router.strong_win_rate(["easy question about lamps", "hard proof about lamps"])
    assert hard > easy + 0.2
    assert meta["params"]["device"] == "auto"  # a GPU when present, else the CPU

    # GPU off (the DAG's use_gpu param) pins the device: a different, CPU-only artifact.
    cpu = train_router(labels, router_type="causal_llm", router_params=FAST, use_gpu=False, artifact_root=local_root)
    assert cpu["key"] != ref["key"]
    assert store.read_json(f"{cpu['key']}/router.json")["params"]["device"] == "cpu"
    knn = router_class("knn")
    assert "device" not in knn.DEFAULT_PARAMS  # use_gpu leaves CPU-only routers alone
