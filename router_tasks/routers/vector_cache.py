"""Caches of prompt vectors: a bounded in-memory LRU (`VectorCache`) and Parquet shards
under the artifact store (`CACHE_PREFIX/<model id>/<content hash>.parquet`); see
`embeddings` for how the embedders use them."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

CACHE_PREFIX = "cache/embeddings"
#: bound on the process-wide in-memory vector cache, all models together (MiniLM vectors are
#: 1.5 KB each: the bundled benchmarks' seed is ~23 MB of them)
DEFAULT_CACHE_BYTES = 256 * 2**20
CACHE_BYTES_ENV = "TELA_EMBEDDING_CACHE_BYTES"


class VectorCache:
    """Vectors by (model id, text key), at most `max_bytes` of them; the least recently used
    go first. Each vector is kept as its own copy (a row of a larger array would pin the
    whole array), and counted as its bytes plus `ENTRY_OVERHEAD` for the key and the map."""

    #: the array's header, the key (a 64-character str), its tuple and the map's slot: ~380
    #: bytes on CPython 3.11, measured with tracemalloc by the cache's test
    ENTRY_OVERHEAD = 512

    def __init__(self, max_bytes: int):
        if int(max_bytes) < 0:
            raise ValueError(f"vector cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.seeded: set[str] = set()  # model ids whose packaged vectors were put in
        #: (store root, model id) -> {"shards": read, "keys": the store holds}
        self.store_state: dict[tuple[str, str], dict] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, model_id: str, key: str) -> np.ndarray | None:
        with self._lock:
            v = self._items.get((model_id, key))
            if v is not None:
                self._items.move_to_end((model_id, key))
            return v

    def put_many(self, model_id: str, keys: Iterable[str], vectors: np.ndarray) -> None:
        with self._lock:
            for k, v in zip(keys, vectors, strict=False):
                size = v.nbytes + self.ENTRY_OVERHEAD
                if size > self.max_bytes:
                    continue
                old = self._items.pop((model_id, k), None)
                if old is not None:
                    self.bytes -= old.nbytes + self.ENTRY_OVERHEAD
                while self._items and self.bytes + size > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self.bytes -= dropped.nbytes + self.ENTRY_OVERHEAD
                self._items[(model_id, k)] = np.array(v, dtype=np.float32)
                self.bytes += size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
            self.seeded.clear()
            self.store_state.clear()


def env_cache_bytes() -> int:
    raw = os.environ.get(CACHE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_CACHE_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"{CACHE_BYTES_ENV}={raw!r}: expected a number of bytes") from None
    if value < 0:
        raise ValueError(f"{CACHE_BYTES_ENV}={raw!r}: expected a number of bytes >= 0")
    return value


def shard_bytes(keys: Sequence[str], vectors: np.ndarray, dtype=np.float32, metadata: dict | None = None) -> bytes:
    """A cache shard (or, with `metadata={"model_id": ...}`, a seed file) as Parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=dtype)
    table = pa.table(
        {
            "text_sha256": pa.array(list(keys), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        },
        metadata=metadata,
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_shard(data: bytes) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    return read_shard_table(pq.read_table(io.BytesIO(data)))


def read_shard_table(table) -> tuple[list[str], np.ndarray]:
    keys = table.column("text_sha256").to_pylist()
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    vectors = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return keys, vectors


def sync_store(store, model_id: str, cache: VectorCache, keys: Sequence[str] = ()) -> dict:
    """Load shards of `store` that `cache` has not read yet; returns its state. When the
    store holds some of `keys` that the cache has dropped (its bound), read it all again."""
    state = cache.store_state.setdefault((store.root, model_id), {"shards": set(), "keys": set()})
    if any(k in state["keys"] and cache.get(model_id, k) is None for k in keys):
        state["shards"].clear()
    prefix = f"{CACHE_PREFIX}/{model_id}/"
    for shard in store.list(prefix):
        if shard in state["shards"] or not shard.endswith(".parquet"):
            continue
        try:
            shard_keys, vectors = read_shard(store.read_bytes(shard))
        except Exception as err:  # a broken shard only costs a recompute
            log.warning("ignoring unreadable embedding cache shard %s: %s", shard, err)
            state["shards"].add(shard)
            continue
        cache.put_many(model_id, shard_keys, vectors)
        state["keys"].update(shard_keys)
        state["shards"].add(shard)
    return state
