"""The traffic log: every routed request, appended to Parquet segments in the artifact store.

    traffic/<YYYY-MM-DD>/<HHMMSS>-<uuid>.parquet

A segment is written whole (the store's writes are atomic), by a background thread,
every `flush_rows` rows or `flush_s` seconds, and at shutdown; a reader never sees half a
segment. Rows hold what was decided and what it cost, never a header or a key: the
gateway builds them from the request body and the upstream's usage only (the client key's
name, never the key, and the reply's id, which user feedback names). The prompt text
is kept by default (it is what the next labeling run learns from); `keep_prompts=False`
stores the prompt id alone, for teams that may not keep user text.

A window of traffic becomes the next labeling run's `source` through
`export_window` (a prompts JSON Lines file ingest reads as is) or the form
`traffic://<from>/<to>` resolved by `resolve_source`.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

import pandas as pd

from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import MAX_PROMPT_CHARS_DEFAULT

log = logging.getLogger(__name__)

PREFIX = "traffic"
EXPORT_PREFIX = "traffic-exports"  # outside PREFIX: exports are not traffic
SCHEME = "traffic://"
COLUMNS = {
    "time": "datetime64[us, UTC]",
    "request_id": "string",
    "prompt_id": "string",
    "prompt": "string",
    "policy": "string",
    "router_key": "string",
    "score": "float64",
    "threshold": "float64",
    "model": "string",
    "fallback": "boolean",
    "fallback_from": "string",
    "status": "Int64",
    "error": "string",
    "decision_ms": "float64",
    "upstream_latency_s": "float64",
    "input_tokens": "Int64",
    "output_tokens": "Int64",
    "cost_usd": "float64",
    "stream": "boolean",
    # the client key's name (never the key) and the reply's id, which feedback names
    "key_name": "string",
    "completion_id": "string",
}
#: rows (and bytes of prompt text) held in memory while the store cannot be written; past
#: them the oldest rows are dropped
MAX_PENDING_ROWS = 50_000
MAX_PENDING_BYTES = 256 * 2**20
#: prompts longer than this keep no text (nor id) in the log: ingest refuses them anyway
#: (`data.ingest.MAX_PROMPT_CHARS_DEFAULT`), and the log's memory stays bounded
MAX_LOGGED_PROMPT_CHARS = MAX_PROMPT_CHARS_DEFAULT


@dataclass(slots=True)
class TrafficRecord:
    """One request as the gateway saw it: what was decided, who answered, what it cost."""

    policy: str
    prompt: str | None = None
    key_name: str | None = None
    router_key: str | None = None
    score: float | None = None
    threshold: float | None = None
    decision_ms: float = 0.0
    model: str | None = None
    fallback: bool = False
    fallback_from: str | None = None
    status: int = 200
    error: str | None = None
    upstream_latency_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stream: bool = False
    completion_id: str | None = None

    def row(self) -> dict:
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


_RECORD_FIELDS = tuple(f.name for f in fields(TrafficRecord))


def typed_frame(rows: list[dict], columns: dict = COLUMNS) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    df["time"] = pd.to_datetime(df["time"], utc=True)
    for col, typ in columns.items():
        if col != "time":
            df[col] = df[col].astype(typ)
    return df


class SegmentLog:
    """Rows appended in memory and written as whole Parquet segments under `prefix` by a
    background thread: every `flush_rows` rows, `flush_bytes` bytes or `flush_s` seconds,
    and at `close()`. Appending costs a lock and a deque append; everything else happens in
    the thread. At most `max_pending` rows and `max_pending_bytes` (as `size_of` counts
    them) wait in memory: a store that stays down costs the oldest rows, counted in
    `dropped`, not the process."""

    def __init__(
        self,
        store: ArtifactStore,
        prefix: str,
        to_frame: Callable[[list[dict]], pd.DataFrame],
        *,
        flush_rows: int = 500,
        flush_s: float = 10.0,
        max_pending: int = MAX_PENDING_ROWS,
        size_of: Callable[[dict], int] = lambda row: 256,
        flush_bytes: int = 16 * 2**20,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        name: str = "tela-segment-log",
    ):
        self.store, self.prefix, self.to_frame, self.size_of = store, prefix, to_frame, size_of
        self.flush_rows, self.flush_s, self.flush_bytes = flush_rows, flush_s, flush_bytes
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self._rows: deque[tuple[dict, int]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.segments_written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return len(self._rows)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def _push(self, row: dict, size: int) -> None:
        """Queue a row, dropping the oldest past the bounds (call with the lock held)."""
        while self._rows and (len(self._rows) >= self.max_pending or self._bytes + size > self.max_pending_bytes):
            _, old = self._rows.popleft()
            self._bytes -= old
            self.dropped += 1
        self._rows.append((row, size))
        self._bytes += size

    def append(self, row: dict) -> None:
        row.setdefault("time", datetime.now(UTC))
        size = self.size_of(row)
        with self._lock:
            self._push(row, size)
            if len(self._rows) >= self.flush_rows or self._bytes >= self.flush_bytes:
                self._wake.set()

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> str | None:
        with self._lock:
            queued, self._rows, self._bytes = list(self._rows), deque(), 0
        if not queued:
            return None
        rows = [row for row, _ in queued]
        try:
            df = self.to_frame(rows)
        except (ValueError, TypeError) as err:  # a bad row must not stop the log: drop this batch, say so
            log.error("dropping %d %s rows that do not fit the log's schema: %s", len(rows), self.prefix, err)
            return None
        # partitioned by the rows' own date, so a window reads only its days
        written = None
        for day, part in df.groupby(df["time"].dt.strftime("%Y-%m-%d"), sort=True):
            now = datetime.now(UTC)
            key = f"{self.prefix}/{day}/{now:%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
            try:
                self.store.write_parquet(key, part.reset_index(drop=True))
            except Exception as err:  # losing the log must not take the gateway down; keep the rows
                log.warning(
                    "could not write %s segment %s: %s; keeping %d rows for the next flush",
                    self.prefix,
                    self.store.uri(key),
                    err,
                    len(part),
                )
                with self._lock:
                    newer = list(self._rows)
                    self._rows, self._bytes = deque(), 0
                    for row, size in [queued[i] for i in part.index] + newer:
                        self._push(row, size)
                continue
            self.segments_written += 1
            written = key
        return written

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()


def _row_size(row: dict) -> int:
    return 256 + len(row.get("prompt") or "")


class TrafficLog(SegmentLog):
    """The gateway's traffic log (`traffic/<date>/...`). Rows are TrafficRecords or dicts of
    COLUMNS; prompt ids are computed (and prompt text dropped, with `keep_prompts=False`)
    when a segment is written, not on the request's path."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        keep_prompts: bool = True,
        flush_rows: int = 500,
        flush_s: float = 10.0,
        max_pending: int = MAX_PENDING_ROWS,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ):
        self.keep_prompts = keep_prompts
        super().__init__(
            store,
            PREFIX,
            self._to_frame,
            flush_rows=flush_rows,
            flush_s=flush_s,
            max_pending=max_pending,
            size_of=_row_size,
            max_pending_bytes=max_pending_bytes,
            name="tela-traffic-log",
        )

    def append(self, row: TrafficRecord | dict) -> None:
        row = row.row() if isinstance(row, TrafficRecord) else dict(row)
        if len(row.get("prompt") or "") > MAX_LOGGED_PROMPT_CHARS:
            row["prompt"] = row["prompt_id"] = None
        super().append(row)

    def _to_frame(self, rows: list[dict]) -> pd.DataFrame:
        for row in rows:
            text = row.get("prompt") or ""
            if row.get("prompt_id") is None:
                row["prompt_id"] = prompt_id(text) if text else None
            if row.get("request_id") is None:
                row["request_id"] = uuid.uuid4().hex
            if not self.keep_prompts:
                row["prompt"] = None
        return typed_frame(rows)


def _utc(value) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def read_window(store: ArtifactStore, start, end) -> pd.DataFrame:
    """Every logged request with start <= time < end (UTC), oldest first."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"traffic window: end {end.isoformat()} is not after start {start.isoformat()}")
    frames = []
    day = start.date()
    while day <= end.date():
        for key in store.list(f"{PREFIX}/{day:%Y-%m-%d}/"):
            if key.endswith(".parquet"):
                frames.append(store.read_parquet(key))
        day += timedelta(days=1)
    if not frames:
        return typed_frame([])
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["time"] >= start) & (df["time"] < end)]
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def latest_window(store: ArtifactStore, hours: float = 1.0, now=None) -> tuple[datetime, datetime]:
    end = _utc(now) if now is not None else datetime.now(UTC)
    return end - timedelta(hours=hours), end


def export_window(store: ArtifactStore, start, end, *, sample: int | None = None, seed: int = 0) -> str:
    """Write the window's distinct prompts (a seeded sample of `sample`) as a prompts JSON
    Lines file in the store; returns its URI, which `ingest_prompts` reads as a source.

    The file is named by its content, so exporting the same window twice writes one file.
    Raises ValueError when the window holds no prompt text (e.g. logged with prompts off).
    """
    df = read_window(store, start, end)
    df = df[df["prompt"].notna()].drop_duplicates("prompt_id")
    if df.empty:
        raise ValueError(
            f"traffic window {_utc(start).isoformat()} .. {_utc(end).isoformat()} holds no prompt "
            "text (no traffic, or it was logged with prompts off)"
        )
    if sample is not None and len(df) > sample:
        df = df.sample(n=sample, random_state=seed).sort_values("time", kind="stable")
    out = pd.DataFrame({"prompt": df["prompt"].astype(str).to_numpy(), "category": "traffic"})
    buf = io.StringIO()
    out.to_json(buf, orient="records", lines=True, force_ascii=False)
    data = buf.getvalue().encode()
    key = f"{EXPORT_PREFIX}/{stable_hash(data.decode(), length=20)}.jsonl"
    if not store.exists(key):
        store.write_bytes(key, data)
    return store.uri(key)


def parse_window(source: str) -> tuple[datetime, datetime]:
    """(start, end) of `traffic://<from>/<to>` (ISO times, UTC unless they say otherwise;
    `<to>` may be `now`); ValueError naming the expected form."""
    body = source[len(SCHEME) :] if isinstance(source, str) and source.startswith(SCHEME) else None
    try:
        if body is None:
            raise ValueError("not a traffic:// source")
        start, end = body.split("/", 1) if body.count("/") == 1 else body.split("..", 1)
        end_t = datetime.now(UTC) if end.strip() == "now" else _utc(end)
        return _utc(start), end_t
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"source {source!r}: expected traffic://<from>/<to> with ISO times, e.g. "
            f"traffic://2026-12-01T00:00/2026-12-01T06:00 ({err})"
        ) from None


def resolve_source(source: str, store: ArtifactStore | None = None, *, sample: int | None = None) -> str:
    """`traffic://<from>/<to>` -> the URI of an exported prompts file (`parse_window` reads
    the form); any other source comes back unchanged. The hook ingest needs: call this on
    `source` before reading it."""
    if not isinstance(source, str) or not source.startswith(SCHEME):
        return source
    start, end = parse_window(source)
    try:
        return export_window(store or ArtifactStore(), start, end, sample=sample)
    except (ValueError, TypeError) as err:
        if "holds no prompt" in str(err):
            raise
        raise ValueError(f"source {source!r}: {err}") from None
