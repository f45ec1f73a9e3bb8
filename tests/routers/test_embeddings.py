"""Embeddings: real MiniLM vectors, and the persistent cache in the artifact store."""

from __future__ import annotations

import numpy as np
import pytest

from router_tasks.core.store import ArtifactStore
from router_tasks.routers import embeddings, vector_cache
from router_tasks.routers.embeddings import EMBED_DIM, Embedder, clear_memory_cache, embed_texts


def test_vectors_are_unit_length_and_semantic(minilm):
    v = embed_texts(
        [
            "What is 2 + 2?",
            "What  is 2 +\n2?",
            "How much is two plus two?",
            "Prove the spectral theorem for compact operators.",
        ]
    )
    assert v.shape == (4, EMBED_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # whitespace variants: one prompt
    assert v[0] @ v[2] > v[0] @ v[3] + 0.2  # paraphrase much closer than an unrelated prompt


def test_matches_plain_transformers_mean_pooling(minilm):
    """The vectors are MiniLM's (mean pooling + L2 norm), not some other pooling."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["Name a fruit that is yellow.", "Derive the Black-Scholes equation from Ito's lemma."]
    path = embeddings.model_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(embeddings.encode(texts), ref, atol=1e-5)


def test_empty_and_bad_input(minilm):
    assert embed_texts([]).shape == (0, EMBED_DIM)
    with pytest.raises(TypeError, match="prompt #1"):
        embed_texts(["fine", None])


def test_store_cache_serves_vectors_without_the_model(minilm, any_root):
    clear_memory_cache()  # other tests may have embedded these texts in this process
    store = ArtifactStore(any_root)
    texts = ["cache me if you can", "and me too", "cache me if you can"]
    first = Embedder(store)
    a = first(texts)
    assert first.stats == {"embedded": 2, "cache_hits": 0}
    shards = store.list(f"{vector_cache.CACHE_PREFIX}/{embeddings.MODEL_ID}/")
    assert len(shards) == 1 and shards[0].endswith(".parquet")

    clear_memory_cache()  # as in a fresh process: only the store has the vectors
    second = Embedder(store)
    b = second(list(reversed(texts)))
    assert second.stats == {"embedded": 0, "cache_hits": 2}
    np.testing.assert_array_equal(b, a[::-1])

    third = Embedder(store)
    third(["and me too", "a brand new prompt"])
    assert third.stats == {"embedded": 1, "cache_hits": 1}
    assert len(store.list(f"{vector_cache.CACHE_PREFIX}/{embeddings.MODEL_ID}/")) == 2  # one new shard


def test_vectors_in_memory_are_still_written_to_a_new_store(minilm, tmp_path):
    embed_texts(["already embedded in this process"])
    store = ArtifactStore(str(tmp_path / "fresh"))
    Embedder(store)(["already embedded in this process"])
    clear_memory_cache()
    e = Embedder(store)
    e(["already embedded in this process"])
    assert e.stats["embedded"] == 0


def test_unreadable_shard_is_ignored(minilm, tmp_path, caplog):
    store = ArtifactStore(str(tmp_path / "a"))
    store.write_bytes(f"{vector_cache.CACHE_PREFIX}/{embeddings.MODEL_ID}/broken.parquet", b"not parquet")
    clear_memory_cache()
    e = Embedder(store)
    v = e(["still works"])
    assert v.shape == (1, EMBED_DIM) and e.stats["embedded"] == 1
    assert "unreadable embedding cache shard" in caplog.text


def test_packaged_seed_matches_the_model_and_is_not_copied_into_stores(local_root):
    """The shipped benchmark vectors must be what the model computes today."""
    import numpy as np

    from router_tasks.core.store import ArtifactStore
    from router_tasks.data import routellm as bm
    from router_tasks.routers import embeddings as emb

    texts = bm.load_benchmark("mmlu", bm.STRONG_MODEL, bm.WEAK_MODEL)["prompt"].sample(4, random_state=3).tolist()
    texts += bm.load_benchmark("mt-bench", bm.STRONG_MODEL, bm.WEAK_MODEL)["prompt"].head(2).tolist()
    emb.clear_memory_cache()
    embedder = emb.Embedder(ArtifactStore(local_root))
    served = embedder(texts)
    assert embedder.stats == {"embedded": 0, "cache_hits": len(texts)}
    fresh = emb.encode(texts)
    assert np.all((served * fresh).sum(axis=1) > 0.999)
    assert ArtifactStore(local_root).list("cache/") == []


# --- SmolLM2's hidden states: a second vector model behind the same caches ----------------
SMOL = "smollm2-layer15"


def test_smollm2_vectors_are_the_full_models_layer_15_mean():
    """The cut model (15 layers, no final norm, padded batches) gives what the whole model's
    hidden_states[15] holds, mean-pooled over each prompt's own tokens."""
    import torch

    from router_tasks.core.prompts import normalize_prompt
    from router_tasks.routers.causal_llm.base_models import SMOLLM2_GGUF, load_base

    texts = [
        "Name a fruit that is yellow.",
        "hi",
        "Derive the Black-Scholes equation from Ito's lemma, step by step, stating every assumption.",
    ]
    got = embeddings.encode_smollm2(texts)  # one padded batch of three lengths
    assert got.shape == (3, embeddings.SMOLLM2_DIM) and got.dtype == np.float32
    model, tok, _ = load_base(SMOLLM2_GGUF, torch.float32)
    for text, row in zip(texts, got, strict=False):
        with torch.no_grad():
            hidden = model.model(
                **tok([normalize_prompt(text)], return_tensors="pt"), output_hidden_states=True
            ).hidden_states[embeddings.SMOLLM2_LAYER]
        ref = hidden[0].mean(0).numpy()
        np.testing.assert_allclose(row, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())  # float noise on huge units


def test_each_model_has_its_own_store_cache(minilm, local_root):
    clear_memory_cache()
    store = ArtifactStore(local_root)
    texts = ["a prompt only this test asks", "and a second one"]
    mini = Embedder(store)
    smol = mini.with_model(SMOL)
    assert smol.store is store and smol.dim == embeddings.SMOLLM2_DIM and smol.model_id != mini.model_id
    a = smol(texts)
    assert a.shape == (2, embeddings.SMOLLM2_DIM) and smol.stats == {"embedded": 2, "cache_hits": 0}
    assert len(store.list(f"{vector_cache.CACHE_PREFIX}/{smol.model_id}/")) == 1
    assert store.list(f"{vector_cache.CACHE_PREFIX}/{mini.model_id}/") == []  # MiniLM was not asked

    clear_memory_cache()  # a fresh process: the store serves SmolLM2's vectors, MiniLM computes its own
    again = Embedder(store, model=SMOL)
    np.testing.assert_array_equal(again(texts), a)
    assert again.stats == {"embedded": 0, "cache_hits": 2}
    fresh_mini = Embedder(store)
    assert fresh_mini(texts).shape == (2, EMBED_DIM) and fresh_mini.stats["embedded"] == 2


def test_unknown_embedding_model_is_named():
    with pytest.raises(ValueError, match="unknown embedding model 'glove'.*minilm"):
        Embedder(model="glove")


def test_packaged_smollm2_seed_matches_the_model(local_root):
    from router_tasks.data import routellm as bm

    texts = bm.load_benchmark("mmlu", bm.STRONG_MODEL, bm.WEAK_MODEL)["prompt"].sample(3, random_state=5).tolist()
    texts += bm.load_benchmark("gsm8k", bm.STRONG_MODEL, bm.WEAK_MODEL)["prompt"].head(1).tolist()
    clear_memory_cache()
    embedder = Embedder(ArtifactStore(local_root), model=SMOL)
    served = embedder(texts)
    assert embedder.stats == {"embedded": 0, "cache_hits": len(texts)}
    fresh = embeddings.encode_smollm2(texts)
    cosine = (served * fresh).sum(axis=1) / np.linalg.norm(served, axis=1) / np.linalg.norm(fresh, axis=1)
    assert np.all(cosine > 0.999)
    assert ArtifactStore(local_root).list("cache/") == []


def test_the_vector_cache_never_holds_more_than_its_bound(minilm, tmp_path):
    """An embedder with a cache of its own: after every call its bytes stay within the
    bound (the least recently used vectors go), and what it holds is really that small."""
    import tracemalloc

    bound = 40 * (EMBED_DIM * 4 + vector_cache.VectorCache.ENTRY_OVERHEAD)  # room for 40 MiniLM vectors
    e = Embedder(cache_bytes=bound, use_seed=False)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for start in range(0, 300, 25):
        e([f"bounded cache prompt number {i}" for i in range(start, start + 25)])
        assert e.cache.bytes <= bound and len(e.cache) <= 40
    held = sum(
        s.size_diff
        for s in tracemalloc.take_snapshot().compare_to(before, "filename")
        if s.traceback[0].filename == embeddings.__file__
    )
    tracemalloc.stop()
    assert len(e.cache) == 40 and held <= bound
    # the most recent prompts are the ones kept; an old one is computed again
    e.stats = {"embedded": 0, "cache_hits": 0}
    e(["bounded cache prompt number 299", "bounded cache prompt number 0"])
    assert e.stats == {"embedded": 1, "cache_hits": 1}
    # a bound of zero caches nothing and still embeds
    none = Embedder(cache_bytes=0, use_seed=False)
    v = none(["no cache at all"])
    assert v.shape == (1, EMBED_DIM) and len(none.cache) == 0 and none.cache.bytes == 0


def test_the_process_cache_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(vector_cache.CACHE_BYTES_ENV, "1e6")
    assert vector_cache.env_cache_bytes() == 1_000_000
    monkeypatch.setenv(vector_cache.CACHE_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match="TELA_EMBEDDING_CACHE_BYTES='lots': expected a number of bytes"):
        vector_cache.env_cache_bytes()
    monkeypatch.delenv(vector_cache.CACHE_BYTES_ENV)
    assert vector_cache.env_cache_bytes() == vector_cache.DEFAULT_CACHE_BYTES
    with pytest.raises(ValueError, match=">= 0"):
        Embedder(cache_bytes=-1)
