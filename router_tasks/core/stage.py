"""The stage contract every pipeline step follows.

A stage reads input artifacts and writes one output artifact:

    stages/<stage>/<key>/<file>...        data files (Parquet, weights, plots)
    stages/<stage>/<key>/_MANIFEST.json   written last; its presence means "complete"

`key` is a hash of the stage name, its version, the *fingerprints* of its inputs and its
config, so the same inputs and config always land on the same key. A re-run finds the
manifest, checks that every file it lists is there with the recorded size *and SHA-256*,
and returns without doing any work (no API calls, no training). Before recomputing a key
the old manifest is deleted, so a crash midway through a recompute leaves no manifest and
is never taken for complete, even where rewritten files keep their old sizes. An
artifact's fingerprint is a hash of its files' contents, so a recomputed upstream that
yields identical data still lets downstream stages reuse.

Two runs computing one key at once (a scheduled retrain and a pipeline run, a retried
task whose first try still runs): one holds the key's lock and computes, the other waits
for the manifest and reuses it. The lock is `fcntl.flock` on a file under
`<root>/.locks/` for a local store (the kernel frees it when the holder dies; the holder
removes the file when done) and a lease object `locks/<key>.json` on S3, created with a
conditional PUT (If-None-Match), renewed by the holder every `LEASE_S / 3` seconds with
If-Match, and taken over with If-Match once expired; a holder that lost its lease does not write the manifest.

A stage may mark its output *incomplete* (`ctx.mark_incomplete`: e.g. labeling rows whose
calls failed). The artifact is usable downstream, but a later run with the same key
recomputes it instead of reusing it, so failed rows are asked again (the request cache
makes the successful ones free) and are never frozen into a reused artifact.

Entry functions hand back an `ArtifactRef` as a plain dict: small enough for an XCom.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd

from router_tasks import __version__
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
MAIN_TABLE = "data.parquet"
LOCKS = "locks"
LEASE_S = float(os.environ.get("TELA_STAGE_LEASE_S", 120))  # an S3 lease outlives a holder by at most this
WAIT_POLL_S = 1.0  # how often a waiting run looks for the other run's manifest


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able value that does not depend on dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class ArtifactRef:
    """What downstream tasks need to find an artifact: travels through XCom as a dict."""

    stage: str
    key: str  # the artifact's folder, relative to the store root
    uri: str
    fingerprint: str
    rows: int | None = None
    reused: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, value: ArtifactRef | Mapping) -> ArtifactRef:
        if isinstance(value, ArtifactRef):
            return value
        if not isinstance(value, Mapping) or not {"stage", "key", "fingerprint"} <= set(value):
            raise TypeError(f"expected an artifact reference dict, got {value!r:.200}")
        return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})


@dataclass
class StageContext:
    """Handed to a stage's compute function: where to read inputs and write outputs."""

    store: ArtifactStore
    stage: str
    key: str
    inputs: dict[str, ArtifactRef]
    config: dict
    stats: dict = field(default_factory=dict)
    _files: dict = field(default_factory=dict)
    incomplete: dict | None = None

    def mark_incomplete(self, rows: int, why: str) -> None:
        """Keep the output, but have the next run with this key recompute it (see module doc)."""
        if rows > 0:
            self.incomplete = {"rows": int(rows), "why": why}

    def read_input(self, name: str, file: str = MAIN_TABLE) -> pd.DataFrame:
        return self.store.read_parquet(f"{self.inputs[name].key}/{file}")

    def input_manifest(self, name: str) -> dict:
        return read_manifest(self.store, self.inputs[name])

    def write_table(self, df: pd.DataFrame, file: str = MAIN_TABLE) -> None:
        data = self.store.write_parquet(f"{self.key}/{file}", df)
        self._files[file] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "rows": int(len(df)),
            "schema": {c: str(t) for c, t in df.dtypes.items()},
        }

    def write_table_batches(self, batches, file: str = MAIN_TABLE, schema=None) -> int:
        """Write an iterable of DataFrames as one Parquet file, a row group each, through a
        spool file: memory holds one batch, not the table. Returns the rows written."""
        import tempfile

        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, writer, pa_schema = 0, None, schema
        with tempfile.NamedTemporaryFile(prefix="tela-spool-", suffix=".parquet") as spool:
            try:
                for df in batches:
                    table = pa.Table.from_pandas(df, preserve_index=False, schema=pa_schema)
                    if writer is None:
                        pa_schema = table.schema
                        writer = pq.ParquetWriter(spool.name, pa_schema, compression="zstd")
                        dtypes = {c: str(t) for c, t in df.dtypes.items()}
                    writer.write_table(table)
                    rows += len(df)
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                raise ValueError(f"{self.stage}: no batches to write to {file}")
            h, n = hashlib.sha256(), 0
            with open(spool.name, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                    n += len(chunk)
            self.store.write_from_file(f"{self.key}/{file}", spool.name)
        self._files[file] = {"sha256": h.hexdigest(), "bytes": n, "rows": rows, "schema": dtypes}
        return rows

    def write_file(self, file: str, data: bytes) -> None:
        self.store.write_bytes(f"{self.key}/{file}", data)
        self._files[file] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def uri(self, file: str = "") -> str:
        return self.store.uri(f"{self.key}/{file}" if file else self.key)


def artifact_key(stage: str, version: str, inputs: Mapping[str, ArtifactRef], config: Mapping) -> str:
    digest = stable_hash(
        {
            "stage": stage,
            "version": version,
            "inputs": {n: r.fingerprint for n, r in sorted(inputs.items())},
            "config": dict(config),
        }
    )
    return f"stages/{stage}/{digest}"


def read_manifest(store: ArtifactStore, ref: ArtifactRef | Mapping) -> dict:
    return store.read_json(f"{ArtifactRef.of(ref).key}/{MANIFEST}")


def load_table(ref: ArtifactRef | Mapping, store: ArtifactStore | None = None, file: str = MAIN_TABLE) -> pd.DataFrame:
    ref = ArtifactRef.of(ref)
    store = store or ArtifactStore()
    return store.read_parquet(f"{ref.key}/{file}")


def find_complete(
    store: ArtifactStore, key: str, *, accept_incomplete: bool = True, verify: bool = True
) -> dict | None:
    """The manifest of a finished artifact at `key`, or None if absent or damaged.

    Every listed file must be there with its recorded size and (with `verify`) SHA-256:
    a size alone does not tell a rewritten file from the one the manifest describes.
    `accept_incomplete=False` also refuses an artifact its stage marked incomplete."""
    try:
        manifest = store.read_json(f"{key}/{MANIFEST}")
    except FileNotFoundError:
        return None
    except ValueError as err:  # not JSON: a damaged manifest is no manifest
        log.warning("artifact %s: unreadable manifest (%s); recomputing", key, err)
        return None
    for file, meta in manifest.get("files", {}).items():
        fkey = f"{key}/{file}"
        try:
            changed = store.size(fkey) != meta["bytes"] or (verify and store.sha256(fkey) != meta["sha256"])
        except Exception as err:  # FileNotFoundError locally, botocore's 404 on S3
            if not _is_missing(err):
                raise
            log.warning("artifact %s lists %s but it is missing; recomputing", key, file)
            return None
        if changed:
            log.warning("artifact %s lists %s but its content changed; recomputing", key, file)
            return None
    if manifest.get("incomplete") and not accept_incomplete:
        log.info("artifact %s is marked incomplete (%s); recomputing", key, manifest["incomplete"])
        return None
    return manifest


def _is_missing(err: Exception) -> bool:
    if isinstance(err, FileNotFoundError):
        return True
    code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class _StageLock:
    """The right to compute one stage key (see the module doc)."""

    def __init__(self, store: ArtifactStore, key: str, lease_s: float = LEASE_S):
        self.store, self.key, self.lease_s = store, key, float(lease_s)
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._fh: IO[bytes] | None = None
        self._path: Path | None = None
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @property
    def _s3_key(self) -> str:
        return f"{LOCKS}/{self.key}.json"

    def _lease(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.lease_s}).encode()

    def try_acquire(self) -> bool:
        if not self.store.is_s3:
            import fcntl

            local_dir = self.store.local_dir
            assert local_dir is not None  # a local store (not is_s3)
            path = local_dir / f".{LOCKS}" / f"{self.key}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+b")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            try:  # the holder unlinks the file on release: a lock on an unlinked inode is no lock
                same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                fh.close()
                return False  # the caller polls again and opens the new file
            self._fh, self._path = fh, path
            return True
        data = self._lease()
        if self.store.write_if(self._s3_key, data, None):  # created: only if absent
            self._token = self.store.read_versioned(self._s3_key)[1]
        else:
            raw, token = self.store.read_versioned(self._s3_key)
            if raw is None:
                return False  # released just now: try again on the next poll
            try:
                held = json.loads(raw)
            except ValueError:
                held = {"expires_at": 0}
            if float(held.get("expires_at", 0)) > time.time():
                return False
            if not self.store.write_if(self._s3_key, data, token):
                return False
            log.warning("stage lock %s: took over an expired lease of %s", self.key, held.get("owner"))
            self._token = self.store.read_versioned(self._s3_key)[1]
        self._thread = threading.Thread(target=self._renew, name="stage-lease", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                ok = self.store.write_if(self._s3_key, self._lease(), self._token)
                if ok:
                    self._token = self.store.read_versioned(self._s3_key)[1]
            except Exception as err:  # noqa: BLE001 - a network blip: try again next beat
                log.warning("stage lock %s: renewing failed (%s)", self.key, err)
                continue
            if not ok:
                self.lost = True
                log.error("stage lock %s: lease lost to another run", self.key)
                return

    def release(self) -> None:
        if self._fh is not None:
            # Unlinked while held, then closed: a waiter that opened the old file sees its
            # inode is gone and opens a new one, so no lock file outlives the run.
            assert self._path is not None  # set together with _fh
            self._path.unlink(missing_ok=True)
            self._fh.close()
            self._fh = None
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.lost:
            raw, _ = self.store.read_versioned(self._s3_key)
            try:
                if raw is not None and json.loads(raw).get("owner") == self.owner:
                    self.store.delete(self._s3_key)
            except ValueError:
                pass


def _ref_from_manifest(store: ArtifactStore, manifest: dict, reused: bool) -> ArtifactRef:
    return ArtifactRef(
        stage=manifest["stage"],
        key=manifest["key"],
        uri=store.uri(manifest["key"]),
        fingerprint=manifest["fingerprint"],
        rows=manifest.get("rows_out"),
        reused=reused,
    )


def run_stage(
    stage: str,
    version: str,
    compute: Callable[[StageContext], None],
    *,
    inputs: Mapping[str, ArtifactRef | Mapping | None] | None = None,
    config: Mapping | None = None,
    store: ArtifactStore | None = None,
    wait_timeout_s: float | None = None,
) -> dict:
    """Run `compute` unless an identical artifact exists; return its reference as a dict.

    `compute(ctx)` writes its outputs through `ctx.write_table` / `ctx.write_file` and may
    put counters in `ctx.stats` (e.g. API calls made). `config` must be JSON-able and hold
    everything that changes the output; secrets never belong in it. While another run
    computes the same key this one waits for it (up to `wait_timeout_s`, default forever:
    the task's own timeout bounds it) and reuses its artifact.
    """
    store = store or ArtifactStore()
    refs = {n: ArtifactRef.of(r) for n, r in (inputs or {}).items() if r is not None}
    config = dict(config or {})
    key = artifact_key(stage, version, refs, config)

    done = find_complete(store, key, accept_incomplete=False)
    if done is not None:
        log.info("%s: reusing complete artifact %s", stage, store.uri(key))
        return _ref_from_manifest(store, done, reused=True).to_dict()

    lock = _StageLock(store, key)
    waited_since, since_iso, logged = time.monotonic(), datetime.now(UTC).isoformat(), False
    while not lock.try_acquire():
        if not logged:
            log.info("%s: another run is computing %s; waiting for it", stage, store.uri(key))
            logged = True
        other = find_complete(store, key, accept_incomplete=True)
        # an incomplete manifest counts only if it is the other run's (finished after we
        # began to wait), not the stale one that run is replacing
        if other is not None and (not other.get("incomplete") or other.get("finished_at", "") >= since_iso):
            log.info("%s: reusing the artifact the other run just finished", stage)
            return _ref_from_manifest(store, other, reused=True).to_dict()
        if wait_timeout_s is not None and time.monotonic() - waited_since > wait_timeout_s:
            raise TimeoutError(f"{stage}: {store.uri(key)} stayed locked by another run for {wait_timeout_s} s")
        time.sleep(WAIT_POLL_S)
    try:
        # The other run may have finished while we waited for the lock.
        done = find_complete(store, key, accept_incomplete=False)
        if done is not None:
            return _ref_from_manifest(store, done, reused=True).to_dict()
        return _compute(store, stage, version, key, refs, config, compute, lock)
    finally:
        lock.release()


def _compute(store, stage, version, key, refs, config, compute, lock: _StageLock) -> dict:
    # Invalidate first: a crash below must not leave the old manifest vouching for new files.
    store.delete(f"{key}/{MANIFEST}")
    started = time.time()
    started_at = datetime.now(UTC).isoformat()
    log.info("%s: computing %s", stage, store.uri(key))
    ctx = StageContext(store=store, stage=stage, key=key, inputs=refs, config=config)
    compute(ctx)
    if not ctx._files:
        raise RuntimeError(f"stage {stage} wrote no output files")

    main = ctx._files.get(MAIN_TABLE, {})
    manifest = {
        "stage": stage,
        "version": version,
        "key": key,
        "fingerprint": stable_hash({f: m["sha256"] for f, m in sorted(ctx._files.items())}),
        "inputs": {n: {"fingerprint": r.fingerprint, "key": r.key, "rows": r.rows} for n, r in refs.items()},
        "config": config,
        "code_version": __version__,
        "files": ctx._files,
        "rows_in": {name: ref.rows for name, ref in refs.items()},
        "rows_out": main.get("rows"),
        "schema": main.get("schema"),
        "stats": ctx.stats,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(time.time() - started, 3),
        "incomplete": ctx.incomplete,
    }
    if lock.lost:
        raise RuntimeError(
            f"{stage}: lost the lock on {store.uri(key)} to another run while computing; "
            f"not publishing this attempt (the other run's manifest stands)"
        )
    store.write_json(f"{key}/{MANIFEST}", manifest)  # last: marks the artifact complete
    return _ref_from_manifest(store, manifest, reused=False).to_dict()


def part_inputs(parts, *, stage: str) -> dict[str, dict]:
    """The refs of a stage's parts as named inputs ("part:00000", ...), in an order that
    does not depend on which part finished first, so the joined artifact's key is stable.
    `parts` is a list, or Airflow's lazy sequence of mapped task results."""
    refs = [parts[i] for i in range(len(parts))]
    if not refs:
        raise ValueError(f"{stage}: no parts to join")
    return {f"part:{i:05d}": ref for i, ref in enumerate(sorted(refs, key=lambda r: r["key"]))}


def resolve_ref(value: str | Mapping | ArtifactRef, store: ArtifactStore | None = None) -> dict:
    """An artifact reference from a ref dict, its JSON text, a key or a URI in the store."""
    store = store or ArtifactStore()
    if isinstance(value, (ArtifactRef, Mapping)):
        return ArtifactRef.of(value).to_dict()
    text = str(value).strip()
    if text.startswith("{"):
        return ArtifactRef.of(json.loads(text)).to_dict()
    key = text
    root_uri = store.uri("")
    if key.startswith(root_uri):
        key = key[len(root_uri) :]
    key = key.strip("/").removesuffix("/" + MANIFEST)
    manifest = find_complete(store, key)
    if manifest is None:
        raise FileNotFoundError(f"no complete artifact at {store.uri(key)} (no {MANIFEST}, or files missing)")
    return _ref_from_manifest(store, manifest, reused=True).to_dict()
