"""A cache of successful LLM replies, so no call that succeeded is ever paid for twice.

Keyed by everything that decides a reply: the endpoint (redacted base URL and model id),
the exact messages sent (system prompt included), the sampling parameters and the
version of the prompt template that built the messages. It lives in the artifact store,
outside any stage's artifact:

    cache/requests/<endpoint-id>/<segment>.parquet

so it survives what an artifact key does not: a prompt set with one prompt added (only
the new prompt is asked), a retried or resumed task, a shard re-planned, a judge run
whose answers changed for one model. A run writes a new segment every `flush_every`
replies or `flush_interval_s` seconds, and when it stops (an exception, SIGTERM), so
even a SIGKILL loses at most that much. Each
segment is written in one atomic put; a torn or unreadable one is skipped with a warning
(costing only a re-ask). Many readers and writers may share a cache: segments are only
ever added, and compaction deletes only the segments it read itself.

Only successes are cached: an error, a timeout or a truncated reply is asked again next
time. Failed *verdict parses* are successes of the call (the judge did answer) and are
cached: asking again at temperature 0 would pay for the same text.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from router_tasks.core.stage import stable_hash
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

CACHE_PREFIX = "cache/requests"
COLUMNS = ["key", "answer", "finish_reason", "input_tokens", "output_tokens", "created_at"]
COMPACT_AFTER = 32  # segments; more than this and a reader folds them into one


@dataclass(frozen=True)
class CachedReply:
    answer: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int


def request_key(*, base_url: str | None, model: str, messages: list[dict], max_tokens: int,
                temperature: float, prompt_version: str) -> str:
    """The cache key of one chat request: the same request always gets the same key."""
    return stable_hash({
        "base_url": base_url, "model": model, "messages": messages, "max_tokens": int(max_tokens),
        "temperature": float(temperature), "prompt_version": prompt_version,
    }, length=32)


class RequestCache:
    """Successful replies of one endpoint (base URL + model)."""

    def __init__(self, store: ArtifactStore, *, base_url: str | None, model: str, flush_every: int = 50,
                 flush_interval_s: float = 5.0):
        self.store = store
        self.prefix = f"{CACHE_PREFIX}/{stable_hash({'base_url': base_url, 'model': model})}"
        self.flush_every = max(1, int(flush_every))
        # Also flush after this long, so a process killed outright (SIGKILL, OOM) loses at
        # most a few seconds of paid replies even when they trickle in slowly.
        self.flush_interval_s = float(flush_interval_s)
        self._last_flush = time.monotonic()
        self._entries: dict[str, CachedReply] | None = None
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self.segments_written = 0

    # -- reading ----------------------------------------------------------------------
    def _segments(self) -> list[str]:
        return [k for k in self.store.list(self.prefix + "/") if k.endswith(".parquet")]

    def _load(self) -> dict[str, CachedReply]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, CachedReply] = {}
        read = []
        for key in self._segments():
            try:
                df = self.store.read_parquet(key)
            except Exception as err:  # noqa: BLE001 - a torn segment only costs a re-ask
                log.warning("request cache: skipping unreadable segment %s: %s", self.store.uri(key), err)
                continue
            read.append(key)
            for r in df.itertuples(index=False):
                entries[r.key] = CachedReply(r.answer, r.finish_reason, int(r.input_tokens), int(r.output_tokens))
        self._entries = entries
        if len(read) > COMPACT_AFTER:
            self._compact(read)
        return entries

    def _compact(self, read: list[str]) -> None:
        rows = [{"key": k, "answer": v.answer, "finish_reason": v.finish_reason, "input_tokens": v.input_tokens,
                 "output_tokens": v.output_tokens, "created_at": None} for k, v in self._entries.items()]
        self._write(rows)  # first the whole, then drop the parts it holds
        for key in read:
            self.store.delete(key)
        log.info("request cache: compacted %d segments into one (%d replies)", len(read), len(rows))

    def get(self, key: str) -> CachedReply | None:
        return self._load().get(key)

    def __len__(self) -> int:
        return len(self._load())

    # -- writing ----------------------------------------------------------------------
    def put(self, key: str, *, answer: str, finish_reason: str | None, input_tokens: int, output_tokens: int) -> None:
        """Record a successful reply; written out every `flush_every` puts and on flush()."""
        entry = CachedReply(answer, finish_reason, int(input_tokens), int(output_tokens))
        with self._lock:
            self._load()[key] = entry
            self._pending.append({"key": key, "answer": answer, "finish_reason": finish_reason,
                                  "input_tokens": int(input_tokens), "output_tokens": int(output_tokens),
                                  "created_at": datetime.now(timezone.utc).isoformat()})
            full = (len(self._pending) >= self.flush_every
                    or time.monotonic() - self._last_flush >= self.flush_interval_s)
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        if rows:
            self._write(rows)

    def _write(self, rows: list[dict]) -> None:
        df = pd.DataFrame(rows, columns=COLUMNS)
        for col in ("key", "answer", "finish_reason", "created_at"):
            df[col] = df[col].astype("string")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.store.write_parquet(f"{self.prefix}/{stamp}-{uuid.uuid4().hex[:12]}.parquet", df)
        self.segments_written += 1
