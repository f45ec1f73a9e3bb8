"""A cache of successful LLM replies, so no call that succeeded is ever paid for twice.

Keyed by everything that decides a reply: the endpoint (redacted base URL and model id),
the exact messages sent (system prompt included), the sampling parameters (`max_tokens`
among them) and the version of the prompt template that built the messages. It lives in
the artifact store, outside any stage's artifact, so it survives what an artifact key
does not: a prompt set with one prompt added (only the new prompt is asked), a retried or
resumed task, a shard re-planned, a judge run whose answers changed for one model.

Partitions: by the prompt shard that asked
------------------------------------------
    cache/requests/<endpoint-id>/n<S>-<s>/seg-<time>-<uuid>.parquet     written by parts
    cache/requests/<endpoint-id>/n<S>-<s>/merged-<time>-<uuid>.parquet  written by compaction
    cache/requests/<endpoint-id>/n<S>-<s>/_INDEX.json                   which files hold what

A reply is stored in the partition of the part that asked for it: shard `s` of `S`
(ingest puts prompt `p` in shard `h(p) mod S`). A part of shard `s'` of `S'` reads only the
partitions that can hold its prompts: `n<S>-<s>` with `s = s' (mod gcd(S, S'))`. With an
unchanged sharding that is its own partition alone, so the bytes a part reads follow its
shard, not the run: a run with ten times the prompts in ten times the shards reads the
same per part. A re-planned sharding stays correct (it reads every partition that may
hold its prompts), and callers that know no shard (references, file mode) use `n1-0`,
which every reader reads. Why by shard and not by key prefix: a part's request keys are
spread over every key prefix, so a key-prefix split would make every part read all of
them; the shard is what a part's rows have in common.

Concurrent readers, writers and compaction never lose or hide an entry
-----------------------------------------------------------------------
- A writer only adds a new, uniquely named segment, in one atomic put, every
  `flush_every` replies or `flush_interval_s` seconds and when it stops, so a SIGKILL loses
  at most that much.
- Compaction (a reader that finds more than `COMPACT_AFTER` loose segments, or `compact()`)
  writes the merged file first, then replaces `_INDEX.json` by a compare-and-swap (S3
  If-Match / If-None-Match; a lock file locally): the index lists the merged files and
  the segments they cover. Two compactors cannot both win; the loser deletes its own
  merged file, which nothing references.
- Nothing is deleted until `grace_s` after the index that made it redundant was
  written: a reader that listed the folder just before can still read it. A reader that
  nevertheless meets a missing file (it stalled past the grace period) lists again and
  re-reads the index rather than skipping it: a miss is never silent. A segment whose
  content is not Parquet (never written by this code) is skipped with a warning.

Replies cut off by `max_tokens` (`finish_reason="length"`) are successes and are cached:
at a fixed `max_tokens` and temperature 0 asking again would pay for the same cut-off text,
and raising `max_tokens` changes the key, so the longer answer is asked then. Errors,
timeouts and refusals are never cached. Failed *verdict parses* are successes of the call
(the judge did answer) and are cached too.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from router_tasks.core.stage import stable_hash
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

CACHE_PREFIX = "cache/requests"
# logprobs: JSON of the token log-probabilities a caller kept (a judge's verdict tokens), or null;
# segments written before it existed read as null
COLUMNS = ["key", "answer", "finish_reason", "input_tokens", "output_tokens", "created_at", "logprobs"]
COMPACT_AFTER = 32  # loose segments in one partition; more and a reader folds them into one
GRACE_S = 900.0  # a redundant file outlives the index that made it so by this long
INDEX = "_INDEX.json"
READ_ATTEMPTS = 8


@dataclass(frozen=True)
class CachedReply:
    answer: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    logprobs: list | None = None


def request_key(
    *,
    base_url: str | None,
    model: str,
    messages: list[dict],
    max_tokens: int,
    temperature: float,
    prompt_version: str,
    options: dict | None = None,
) -> str:
    """The cache key of one chat request: the same request always gets the same key.
    `options` (further request fields, e.g. `logprobs`) enter it only when given, so a
    plain request keeps the key it always had."""
    return stable_hash(
        {
            "base_url": base_url,
            "model": model,
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "prompt_version": prompt_version,
        }
        | ({"options": dict(options)} if options else {}),
        length=32,
    )


def _logprobs_of(value) -> list | None:
    return json.loads(value) if isinstance(value, str) and value else None


Partition = tuple  # (shards, shard)
WHOLE: Partition = (1, 0)


def partition_name(partition: Partition | None) -> str:
    shards, shard = partition or WHOLE
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"request cache partition {partition!r}: expected (shards >= 1, 0 <= shard < shards)")
    return f"n{int(shards)}-{int(shard)}"


def _parse_name(name: str) -> Partition | None:
    try:
        n, s = name[1:].split("-")
        return int(n), int(s)
    except ValueError:
        return None


def may_hold(stored: Partition, wanted: Partition) -> bool:
    """Can partition `stored` hold replies for prompts of shard `wanted`? (h mod S = s and
    h mod S' = s' have a common solution iff s = s' mod gcd(S, S').)"""
    g = math.gcd(stored[0], wanted[0])
    return (stored[1] - wanted[1]) % g == 0


def _logprobs_json(logprobs: list | None) -> str | None:
    return None if logprobs is None else json.dumps(logprobs, separators=(",", ":"))


class RequestCache:
    """Successful replies of one endpoint (base URL + model), by partition."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        base_url: str | None,
        model: str,
        flush_every: int = 50,
        flush_interval_s: float = 5.0,
        grace_s: float = GRACE_S,
        compact_after: int = COMPACT_AFTER,
    ):
        self.store = store
        self.prefix = f"{CACHE_PREFIX}/{stable_hash({'base_url': base_url, 'model': model})}"
        self.flush_every = max(1, int(flush_every))
        # Also flush after this long, so a process killed outright (SIGKILL, OOM) loses at
        # most a few seconds of paid replies even when they trickle in slowly.
        self.flush_interval_s = float(flush_interval_s)
        self.grace_s = float(grace_s)
        self.compact_after = int(compact_after)
        self._last_flush = time.monotonic()
        self._loaded: dict[str, dict[str, CachedReply]] = {}  # partition folder -> entries
        self._views: dict[Partition, list[str]] = {}  # reader partition -> folders it reads
        self._pending: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        self.segments_written = 0
        self.files_read = 0
        self.bytes_read = 0

    # -- reading ----------------------------------------------------------------------
    def _view(self, partition: Partition | None) -> list[str]:
        partition = tuple(partition or WHOLE)
        if partition not in self._views:
            names = self.store.list_dirs(self.prefix)
            mine = partition_name(partition)
            folders = [n for n in names if (p := _parse_name(n)) is not None and may_hold(p, partition)]
            self._views[partition] = sorted(set(folders) | {mine})
        return self._views[partition]

    def _folder(self, name: str) -> dict[str, CachedReply]:
        if name not in self._loaded:
            self._loaded[name] = self._read_partition(name)
        return self._loaded[name]

    def _read_index(self, folder: str) -> tuple[dict, str | None]:
        raw, token = self.store.read_versioned(f"{folder}/{INDEX}")
        if raw is None:
            return {"merged": [], "covers": {}, "retired": {}}, None
        return json.loads(raw), token

    def _files(self, folder: str) -> list[str]:
        return [k.rsplit("/", 1)[-1] for k in self.store.list(folder + "/") if k.endswith(".parquet")]

    def _read_partition(self, name: str) -> dict[str, CachedReply]:
        folder = f"{self.prefix}/{name}"
        for attempt in range(READ_ATTEMPTS):
            files = self._files(folder)
            index, token = self._read_index(folder)
            loose = [f for f in files if f.startswith("seg-") and f not in index["covers"]]
            wanted = list(index["merged"]) + loose
            entries: dict[str, CachedReply] = {}
            try:
                for f in wanted:
                    self._read_file(f"{folder}/{f}", entries)
            except FileNotFoundError:
                # Removed after its grace period while we read: the new index covers it.
                log.info("request cache: %s changed while reading (attempt %d); reading again", folder, attempt + 1)
                continue
            if len(loose) > self.compact_after:
                self._compact(name, read=(index, token, loose, entries))
            return entries
        raise RuntimeError(
            f"request cache: {self.store.uri(folder)} kept changing over {READ_ATTEMPTS} reads; "
            f"is grace_s ({self.grace_s} s) shorter than a read?"
        )

    def _read_file(self, key: str, into: dict[str, CachedReply]) -> None:
        import io

        import pyarrow.parquet as pq

        data = self.store.read_bytes(key)  # FileNotFoundError: the caller lists again
        self.bytes_read += len(data)
        try:
            df = pq.read_table(io.BytesIO(data)).to_pandas()
        except Exception as err:  # noqa: BLE001 - not Parquet: costs only a re-ask, never a hidden miss of a good file
            log.warning("request cache: skipping unreadable file %s: %s", self.store.uri(key), err)
            return
        self.files_read += 1
        has_logprobs = "logprobs" in df.columns
        for r in df.itertuples(index=False):
            into[r.key] = CachedReply(
                r.answer,
                r.finish_reason,
                int(r.input_tokens),
                int(r.output_tokens),
                _logprobs_of(r.logprobs) if has_logprobs else None,
            )

    def get(self, key: str, partition: Partition | None = None) -> CachedReply | None:
        """The cached reply for `key`, looked up in the partitions that may hold `partition`'s prompts."""
        with self._lock:
            for name in self._view(partition):
                hit = self._folder(name).get(key)
                if hit is not None:
                    return hit
        return None

    def entries(self, partition: Partition | None = None) -> int:
        with self._lock:
            return sum(len(self._folder(n)) for n in self._view(partition))

    def __len__(self) -> int:
        return self.entries(None)

    # -- compaction -------------------------------------------------------------------
    def compact(self, partition: Partition | None = None) -> bool:
        """Fold a partition's loose segments into one merged file; True if this call did."""
        name = partition_name(partition)
        return self._compact(name)

    def _compact(self, name: str, read: tuple | None = None) -> bool:
        """`read`: (index, token, loose, entries) a reader just read: merged without reading
        again; the compare-and-swap on `token` fails if the index moved on meanwhile."""
        folder = f"{self.prefix}/{name}"
        if read is not None:
            index, token, loose, entries = read
        else:
            index, token = self._read_index(folder)
            loose = [f for f in self._files(folder) if f.startswith("seg-") and f not in index["covers"]]
            entries = None
        now = time.time()
        covers = {**index["covers"], **{f: now for f in loose}}
        retired = dict(index.get("retired", {}))
        merged = list(index["merged"])
        merged_name = None
        if loose or len(merged) > 1:
            merged_entries: dict[str, CachedReply] = {}
            if entries is not None:
                merged_entries = entries
            else:
                try:
                    for f in merged + loose:
                        self._read_file(f"{folder}/{f}", merged_entries)
                except FileNotFoundError:
                    return False  # another compactor moved on; next time
            rows = [
                {
                    "key": k,
                    "answer": v.answer,
                    "finish_reason": v.finish_reason,
                    "input_tokens": v.input_tokens,
                    "output_tokens": v.output_tokens,
                    "created_at": None,
                    "logprobs": _logprobs_json(v.logprobs),
                }
                for k, v in merged_entries.items()
            ]
            merged_name = self._write(folder, rows, kind="merged")  # first the whole...
            retired.update({m: now for m in merged})
            merged = [merged_name]
        expired = sorted(f for f, at in {**covers, **retired}.items() if now - at >= self.grace_s)
        if merged_name is None and not expired:
            return False
        new_index = {
            "merged": merged,
            "covers": {f: at for f, at in covers.items() if f not in expired},
            "retired": {f: at for f, at in retired.items() if f not in expired},
            "written_at": now,
        }
        data = json.dumps(new_index, sort_keys=True).encode()
        ok = self.store.write_if(f"{folder}/{INDEX}", data, token)  # token None: only if absent
        if not ok:  # another compactor's index stands; ours is referenced by nothing
            if merged_name:
                self.store.delete(f"{folder}/{merged_name}")
            return False
        for f in expired:  # ...then, a grace period after they became redundant, the parts
            self.store.delete(f"{folder}/{f}")
        log.info(
            "request cache: compacted %s: %d loose segments into %s, %d old files removed",
            self.store.uri(folder),
            len(loose),
            merged_name or "the same merged file",
            len(expired),
        )
        return True

    # -- writing ----------------------------------------------------------------------
    def put(
        self,
        key: str,
        *,
        answer: str,
        finish_reason: str | None,
        input_tokens: int,
        output_tokens: int,
        partition: Partition | None = None,
        logprobs: list | None = None,
    ) -> None:
        """Record a successful reply; written out every `flush_every` puts and on flush()."""
        entry = CachedReply(answer, finish_reason, int(input_tokens), int(output_tokens), logprobs)
        name = partition_name(partition)
        with self._lock:
            self._loaded.setdefault(name, {})[key] = entry
            self._pending.setdefault(name, []).append(
                {
                    "key": key,
                    "answer": answer,
                    "finish_reason": finish_reason,
                    "input_tokens": int(input_tokens),
                    "output_tokens": int(output_tokens),
                    "created_at": datetime.now(UTC).isoformat(),
                    "logprobs": _logprobs_json(logprobs),
                }
            )
            n = sum(len(v) for v in self._pending.values())
            full = n >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        for name, rows in pending.items():
            if rows:
                self._write(f"{self.prefix}/{name}", rows, kind="seg")

    def _write(self, folder: str, rows: list[dict], *, kind: str) -> str:
        df = pd.DataFrame(rows, columns=COLUMNS)
        for col in ("key", "answer", "finish_reason", "created_at", "logprobs"):
            df[col] = df[col].astype("string")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{kind}-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        self.store.write_parquet(f"{folder}/{name}", df)
        self.segments_written += kind == "seg"
        return name
