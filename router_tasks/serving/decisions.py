"""Routing decisions: the router being served (hot-reloaded), and the batcher that scores
the prompts of concurrent requests together off the event loop.

Routing never runs on the event loop: prompts queue for one worker thread, which scores
all that arrived while the previous batch ran in one `predict_quality` call (one batched
embedding). A router reads a bounded prefix of each prompt (its `max_prompt_chars`, else
the gateway's `route_chars`), so no prompt costs more to route than a long one should.

Hot reload: the holder re-resolves the router reference (e.g. "champion") and its newest
calibration every `reload_s`; a changed key loads the new router in the worker thread and
swaps one reference. A request keeps the router it was decided with, so in-flight requests
finish unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from router_tasks.core.stage import find_complete
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import EmbeddingRouter, load_router, resolve_router_key
from router_tasks.routers.embeddings import Embedder
from router_tasks.routing.policy import DEFAULT_THRESHOLD, threshold_for_share_from
from router_tasks.serving.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class LoadedRouter:
    router: object
    key: str
    calibration_key: str | None
    threshold: float
    threshold_source: str
    scores: np.ndarray | None  # the calibration sample's strong_win_rate (for tela-auto@share)
    target_share: float | None = None
    route_chars: int = 4096  # prompt characters the router reads
    _share_threshold: object = field(default=None, repr=False)
    _columns: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self):
        # share -> threshold, memoised: model names are client input, so the memo is bounded
        self._share_threshold = functools.lru_cache(maxsize=64)(threshold_for_share_from(self.scores))
        self._columns = [str(m) for m in self.router.models]  # the quality dicts' keys, once

    @property
    def representation(self) -> str | None:
        """The prompt representation the router reads (None: no embedding)."""
        return getattr(self.router, "representation", None)

    def share_threshold(self, share: float) -> float:
        return self._share_threshold(share)

    def predict(self, prompts: list[str]) -> tuple[list[dict], np.ndarray]:
        prompts = [p[: self.route_chars] for p in prompts]
        # the numpy path: a DataFrame per decision would cost a third of a fast router's time
        q = self.router.predict_quality_array(prompts)
        score = self.router.strong_win_rate(prompts, quality=q)
        return [dict(zip(self._columns, row, strict=True)) for row in q.tolist()], np.asarray(score, dtype=float)

    def info(self) -> dict:
        return {
            "key": self.key,
            "kind": self.router.kind,
            "representation": self.representation,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "route_chars": self.route_chars,
        }


def latest_calibration(store: ArtifactStore, router_key: str) -> tuple[str, dict] | None:
    """(artifact key, calibration.json) of the newest complete threshold calibration of
    `router_key` in `store`, or None."""
    best = None
    for key in store.list("stages/calibrate/"):
        if not key.endswith("/calibration.json"):
            continue
        try:
            cal = store.read_json(key)
        except (OSError, ValueError):
            continue
        if (cal.get("router") or {}).get("key") != router_key or "threshold" not in cal:
            continue
        art = key.rsplit("/", 1)[0]
        manifest = find_complete(store, art)
        if manifest is None:
            continue
        stamp = manifest.get("finished_at") or ""
        if best is None or stamp > best[0]:
            best = (stamp, art, cal)
    return None if best is None else (best[1], best[2])


def load_serving_router(ref: str, store: ArtifactStore, route_chars: int = 4096) -> LoadedRouter:
    """The router `ref` names, with its newest calibration, ready to serve."""
    rstore, key = resolve_router_key(ref, store)
    router = load_router(key, rstore)
    if isinstance(router, EmbeddingRouter):
        # In memory only: the store-backed cache lists and writes a shard per call, which
        # costs far more than embedding one prompt (the packaged seed still serves).
        router.embedder = Embedder(None)
    chars = int(getattr(router, "max_prompt_chars", None) or route_chars)
    found = latest_calibration(rstore, key)
    if found is None:
        log.warning(
            "router %s has no stored calibration: tela-auto uses threshold %.2f, tela-auto@<share> is off",
            key,
            DEFAULT_THRESHOLD,
        )
        return LoadedRouter(router, key, None, DEFAULT_THRESHOLD, "default", None, route_chars=chars)
    art, cal = found
    try:
        scores = rstore.read_parquet(f"{art}/data.parquet")["strong_win_rate"].to_numpy(float)
    except (OSError, KeyError):
        scores = None
    return LoadedRouter(
        router, key, art, float(cal["threshold"]), art, scores, cal.get("target_strong_share"), route_chars=chars
    )


class RouterHolder:
    """The current router, swapped atomically on reload."""

    def __init__(
        self, ref: str, store: ArtifactStore, executor: ThreadPoolExecutor, metrics: Metrics, route_chars: int = 4096
    ):
        self.ref, self.store, self.executor, self.metrics = ref, store, executor, metrics
        self.route_chars = route_chars
        self.current: LoadedRouter | None = None
        self.reloads = 0
        self.last_error: str | None = None

    def _resolve(self) -> tuple[str, str | None]:
        rstore, key = resolve_router_key(self.ref, self.store)
        cal = latest_calibration(rstore, key)
        return key, None if cal is None else cal[0]

    async def refresh(self) -> bool:
        """Load the router if its key or calibration changed; True when it swapped."""
        loop = asyncio.get_running_loop()
        try:
            key, cal = await loop.run_in_executor(self.executor, self._resolve)
            cur = self.current
            if cur is not None and cur.key == key and cur.calibration_key == cal:
                return False
            loaded = await loop.run_in_executor(self.executor, load_serving_router, key, self.store, self.route_chars)
            # the first call loads the embedding model: not on a request
            await loop.run_in_executor(self.executor, loaded.predict, ["warm up"])
        except Exception as err:  # keep serving the router we have
            self.last_error = f"{type(err).__name__}: {err}"
            log.warning("router reload failed, keeping %s: %s", getattr(self.current, "key", None), self.last_error)
            return False
        old, self.current = self.current, loaded
        self.reloads += old is not None
        self.last_error = None
        self.metrics.clear("tela_router_info")
        self.metrics.set(
            "tela_router_info",
            "The router serving requests (1).",
            1,
            key=loaded.key,
            kind=loaded.router.kind,
            representation=str(loaded.representation),
            threshold=f"{loaded.threshold:.6g}",
        )
        log.info(
            "serving router %s (%s, representation %s), threshold %.6f from %s, routing on the first %d characters%s",
            loaded.key,
            loaded.router.kind,
            loaded.representation,
            loaded.threshold,
            loaded.threshold_source,
            loaded.route_chars,
            "" if old is None else f"; replaced {old.key}",
        )
        return True


class DecisionBatcher:
    """Prompts of concurrent requests, scored together in the worker thread.

    Whatever arrives while a batch is being scored forms the next batch (up to
    `max_batch`). Only counters are kept (batches, prompts, the largest batch) and the
    batch-size histogram in the metrics: nothing grows with the requests served.
    """

    def __init__(self, executor: ThreadPoolExecutor, max_batch: int = 64, metrics: Metrics | None = None):
        self.executor, self.max_batch, self.metrics = executor, max_batch, metrics
        self._pending: list = []
        self._running = False
        self.batches = 0
        self.prompts = 0
        self.largest_batch = 0

    async def predict(self, loaded: LoadedRouter, prompt: str) -> tuple[dict, float]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((loaded, prompt, fut))
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await fut

    def _count(self, size: int) -> None:
        self.batches += 1
        self.prompts += size
        self.largest_batch = max(self.largest_batch, size)
        if self.metrics is not None:
            self.metrics.observe(
                "tela_decision_batch_size", "Prompts scored together in one routing call.", size, buckets=BATCH_BUCKETS
            )

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                groups: dict[int, tuple[LoadedRouter, list]] = {}
                for loaded, prompt, fut in batch:  # a reload mid-queue: each keeps its router
                    groups.setdefault(id(loaded), (loaded, []))[1].append((prompt, fut))
                for loaded, items in groups.values():
                    self._count(len(items))
                    try:
                        quality, score = await loop.run_in_executor(
                            self.executor, loaded.predict, [p for p, _ in items]
                        )
                    except Exception as err:
                        for _, fut in items:
                            if not fut.done():
                                fut.set_exception(err)
                        continue
                    for i, (_, fut) in enumerate(items):
                        if not fut.done():
                            fut.set_result((quality[i], float(score[i])))
        finally:
            self._running = False


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
