"""One artifact store for a local folder and for S3.

Why boto3 and not Airflow's ObjectStoragePath: the library must run without Airflow
(the `tela` CLI, notebooks, tests), and boto3 is the reference S3 client with retries
built in. The DAG layer turns an Airflow connection into the same settings (endpoint,
keys) through environment variables, so MinIO, moto and AWS are all reached the same way.

Writes are whole-object: S3 PUT is atomic per object, and local writes go to a temporary
file that is renamed into place, so a reader never sees half a file. Completeness of a
*set* of files is the stage contract's job (a manifest written last, see `stage.py`).

A pointer that several writers move (the champion) needs more than atomic writes: two
writers that both read version A must not both replace it. `read_versioned` returns the
object with a version token and `write_if` replaces it only if it still has that version
(compare-and-swap): on S3 a conditional PUT (`If-Match: <ETag>`, or `If-None-Match: *`
for "must not exist yet"), which S3 evaluates atomically on the server; locally an
exclusive `flock` on a lock file beside the object around the compare and the rename.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_ROOT = "./artifacts"


class ArtifactStore:
    """Keys are '/'-separated paths below a root (`./artifacts`, `file:///x`, `s3://b/p`)."""

    def __init__(self, root: str | os.PathLike | None = None, *, endpoint_url: str | None = None):
        root = str(root or os.environ.get("TELA_ARTIFACT_ROOT") or DEFAULT_ROOT)
        self.root = root.rstrip("/")
        parsed = urlparse(self.root)
        if parsed.scheme == "s3":
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self._endpoint_url = (
                endpoint_url or os.environ.get("TELA_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
            )
            self._client = None
            self.local_dir: Path | None = None
        elif parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme == "file" else self.root
            self.local_dir = Path(path).resolve()
        else:
            raise ValueError(f"artifact root {root!r}: expected a local path, file:// or s3:// URI")

        # What this store object read: object GETs per key and bytes. Tests and benchmarks
        # use them to show a part reads only its own partitions.
        self.reads: collections.Counter = collections.Counter()
        self.bytes_read = 0
        self._count_lock = threading.Lock()

    def _count_read(self, key: str, n: int) -> None:
        with self._count_lock:
            self.reads[key] += 1
            self.bytes_read += n

    # -- addressing -------------------------------------------------------------------
    @property
    def is_s3(self) -> bool:
        return self.local_dir is None

    @property
    def _dir(self) -> Path:
        """`local_dir` of a local store (the callers have checked `is_s3`)."""
        assert self.local_dir is not None, f"{self.root} is an S3 store"
        return self.local_dir

    def uri(self, key: str) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self._s3_key(key)}"
        return str(self._dir / key)

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self._endpoint_url,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client

    # -- bytes ------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        if self.is_s3:
            self.s3.put_object(Bucket=self.bucket, Key=self._s3_key(key), Body=data)
            return
        path = self._dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read_bytes(self, key: str) -> bytes:
        if self.is_s3:
            try:
                obj = self.s3.get_object(Bucket=self.bucket, Key=self._s3_key(key))
            except self.s3.exceptions.NoSuchKey:
                raise FileNotFoundError(self.uri(key)) from None
            data = obj["Body"].read()
        else:
            data = (self._dir / key).read_bytes()
        self._count_read(key, len(data))
        return data

    def sha256(self, key: str) -> str:
        """The SHA-256 of an object, streamed (a big file is never held in memory whole)."""
        h = hashlib.sha256()
        n = 0
        if self.is_s3:
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=self._s3_key(key))["Body"]
            except self.s3.exceptions.NoSuchKey:
                raise FileNotFoundError(self.uri(key)) from None
            for chunk in body.iter_chunks(1 << 20):
                h.update(chunk)
                n += len(chunk)
        else:
            with open(self._dir / key, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                    n += len(chunk)
        self._count_read(key, n)
        return h.hexdigest()

    def write_from_file(self, key: str, path: str | os.PathLike) -> None:
        """Put a local file's content at `key` (multipart on S3): for outputs written in
        batches to a spool file, never held in memory whole."""
        if self.is_s3:
            self.s3.upload_file(str(path), self.bucket, self._s3_key(key))
            return
        dest = self._dir / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            import shutil

            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- conditional writes: the champion pointer, stage leases, cache indexes ---------
    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(bytes, version token) of `key`, or (None, None) when it does not exist."""
        if self.is_s3:
            try:
                obj = self.s3.get_object(Bucket=self.bucket, Key=self._s3_key(key))
            except self.s3.exceptions.NoSuchKey:
                return None, None
            data = obj["Body"].read()
            self._count_read(key, len(data))
            return data, obj["ETag"]
        path = self._dir / key
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        self._count_read(key, len(data))
        return data, hashlib.sha256(data).hexdigest()

    def write_if(self, key: str, data: bytes, version: str | None) -> bool:
        """Write `data` only if `key` still has `version` (from `read_versioned`; None:
        only if `key` does not exist). True if written, False if someone else wrote first."""
        if self.is_s3:
            from botocore.exceptions import ClientError

            cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
            try:
                self.s3.put_object(Bucket=self.bucket, Key=self._s3_key(key), Body=data, **cond)
                return True
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code")
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                # 412: the condition failed; 409: a concurrent conditional write is in flight;
                # NoSuchKey: If-Match on an object deleted meanwhile
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412):
                    return False
                raise
        import fcntl

        path = self._dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if self.read_versioned(key)[1] != version:
                    return False
                self.write_bytes(key, data)
                return True
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def exists(self, key: str) -> bool:
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                self.s3.head_object(Bucket=self.bucket, Key=self._s3_key(key))
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return (self._dir / key).is_file()

    def size(self, key: str) -> int:
        if self.is_s3:
            return self.s3.head_object(Bucket=self.bucket, Key=self._s3_key(key))["ContentLength"]
        return (self._dir / key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        """Keys below `prefix` (relative to the root), sorted; temporary files excluded."""
        if self.is_s3:
            keys = []
            full = self._s3_key(prefix)
            strip = len(self.prefix) + 1 if self.prefix else 0
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys += [o["Key"][strip:] for o in page.get("Contents", [])]
            return sorted(keys)
        base = self._dir / prefix if prefix else self._dir
        if base.is_file():
            return [prefix]
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self._dir))
            for p in base.rglob("*")
            if p.is_file()
            and not (p.name.startswith(".") and p.name.endswith((".tmp", ".lock")))
            and not p.relative_to(self._dir).parts[0].startswith(".")  # .locks/: not artifacts
        )

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The names of the 'folders' directly below `prefix` (one LIST, not a full walk)."""
        prefix = prefix.rstrip("/") + "/"
        if self.is_s3:
            names = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._s3_key(prefix), Delimiter="/"
            ):
                names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
            return sorted(names)
        base = self._dir / prefix
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, key: str) -> None:
        if self.is_s3:
            self.s3.delete_object(Bucket=self.bucket, Key=self._s3_key(key))
        else:
            (self._dir / key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for `key` when the store is local (lets big readers mmap)."""
        return None if self.is_s3 else self._dir / key

    # -- typed helpers ----------------------------------------------------------------
    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_parquet(self, key: str, df: pd.DataFrame) -> bytes:
        """Write `df` as Parquet; returns the bytes written (for hashing)."""
        table = pa.Table.from_pandas(df, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(key, data)
        return data

    def read_parquet(self, key: str) -> pd.DataFrame:
        return pq.read_table(io.BytesIO(self.read_bytes(key))).to_pandas()

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"
