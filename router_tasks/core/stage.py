"""The stage contract every pipeline step follows.

A stage reads input artifacts and writes one output artifact:

    stages/<stage>/<key>/<file>...        data files (Parquet, weights, plots)
    stages/<stage>/<key>/_MANIFEST.json   written last; its presence means "complete"

`key` is a hash of the stage name, its version, the *fingerprints* of its inputs and its
config, so the same inputs and config always land on the same key. A re-run finds the
manifest, checks the files it lists are there with the recorded sizes, and returns
without doing any work (no API calls, no training). A crashed run leaves data files but
no manifest, and the next run recomputes and overwrites them: nothing half-written is
ever taken for complete. An artifact's fingerprint is a hash of its files' contents, so
a recomputed upstream that yields identical data still lets downstream stages reuse.

Entry functions hand back an `ArtifactRef` as a plain dict: small enough for an XCom.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import pandas as pd

from router_tasks import __version__
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
MAIN_TABLE = "data.parquet"


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
    def of(cls, value: "ArtifactRef | Mapping") -> "ArtifactRef":
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


def find_complete(store: ArtifactStore, key: str) -> dict | None:
    """The manifest of a finished artifact at `key`, or None if absent or incomplete."""
    if not store.exists(f"{key}/{MANIFEST}"):
        return None
    manifest = store.read_json(f"{key}/{MANIFEST}")
    for file, meta in manifest.get("files", {}).items():
        fkey = f"{key}/{file}"
        if not store.exists(fkey) or store.size(fkey) != meta["bytes"]:
            log.warning("artifact %s lists %s but it is missing or changed; recomputing", key, file)
            return None
    return manifest


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
) -> dict:
    """Run `compute` unless an identical artifact exists; return its reference as a dict.

    `compute(ctx)` writes its outputs through `ctx.write_table` / `ctx.write_file` and may
    put counters in `ctx.stats` (e.g. API calls made). `config` must be JSON-able and hold
    everything that changes the output; secrets never belong in it.
    """
    store = store or ArtifactStore()
    refs = {n: ArtifactRef.of(r) for n, r in (inputs or {}).items() if r is not None}
    config = dict(config or {})
    key = artifact_key(stage, version, refs, config)

    done = find_complete(store, key)
    if done is not None:
        log.info("%s: reusing complete artifact %s", stage, store.uri(key))
        return _ref_from_manifest(store, done, reused=True).to_dict()

    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat()
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
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "seconds": round(time.time() - started, 3),
    }
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


def resolve_ref(value: "str | Mapping | ArtifactRef", store: ArtifactStore | None = None) -> dict:
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
        key = key[len(root_uri):]
    key = key.strip("/").removesuffix("/" + MANIFEST)
    manifest = find_complete(store, key)
    if manifest is None:
        raise FileNotFoundError(f"no complete artifact at {store.uri(key)} (no {MANIFEST}, or files missing)")
    return _ref_from_manifest(store, manifest, reused=True).to_dict()
