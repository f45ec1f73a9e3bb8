"""The routing gateway: an OpenAI-compatible HTTP server that routes each chat request
through the champion router to one of the pipeline's upstream endpoints.

    POST /v1/chat/completions   stream and non-stream; every other field passed through
    GET  /v1/models             the policy names and the upstreams
    GET  /health                router key, upstream cooldowns (503 until a router is loaded)
    GET  /metrics               Prometheus text

Why Starlette + uvicorn: Airflow already brings them (no new dependency) and they are the
reference async stack. Routing never runs on the event loop: prompts of concurrent
requests queue for one worker thread, which embeds and scores all that arrived while the
previous batch ran in one `predict_quality` call (one batched embedding).

Upstream calls go through `openai.AsyncOpenAI`, one client per endpoint with that
endpoint's timeout and retries (the client honours Retry-After / retry-after-ms). A call
that still fails (5xx, 408/429, timeout, connection) moves on to the next model of the
fallback chain (next-best by the router's predicted quality) and counts against that
upstream: `cooldown_fails` failures in a row put it in cooldown for `cooldown_s`, during
which chains skip it (LiteLLM's allowed_fails / cooldown_time). A 4xx other than 408/429
is the caller's fault and comes back as is.

Hot reload: a background task re-resolves the router reference (e.g. "champion") and its
newest calibration every `reload_s`; a changed key loads the new router in the worker
thread and swaps one reference. A request keeps the router it was decided with, so
in-flight requests finish unchanged.

Secrets: upstream keys live only inside the openai clients (read from `api_key_env`);
the caller's Authorization header is never forwarded, logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from router_tasks.core.schemas import CHAMPION_KEY
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.llm_client import Endpoint
from router_tasks.serving.metrics import Metrics
from router_tasks.serving.policy import (
    AUTO,
    DEFAULT_THRESHOLD,
    Policy,
    PolicyError,
    decide,
    parse_model_name,
    request_cost,
    threshold_for_share_from,
)
from router_tasks.serving.traffic import TrafficLog

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}


# ---- configuration ------------------------------------------------------------------------


def parse_models_arg(value) -> list[Endpoint]:
    """MODELS as the pipeline takes it: a JSON list (text or parsed) or a .json file of one."""
    from router_tasks.labeling.generate import parse_endpoints

    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            try:
                with open(text) as fh:
                    text = fh.read()
            except OSError as err:
                raise ValueError(f"--models: {value!r} is neither a JSON list nor a readable file ({err})") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--models: not valid JSON ({err.msg} at char {err.pos})") from None
    return parse_endpoints(value, where="models")


@dataclass
class GatewayConfig:
    endpoints: list[Endpoint]
    router: str = "champion"
    artifact_root: str | None = None
    keep_prompts: bool = True  # traffic log keeps prompt text
    log_traffic: bool = True
    reload_s: float = 10.0
    cooldown_fails: int = 3
    cooldown_s: float = 30.0
    max_batch: int = 64
    traffic_flush_s: float = 10.0
    # torch intra-op threads for routing. One: a single-prompt embedding gains nothing from
    # more, and OpenMP workers spinning against the event loop and the upstream I/O made
    # one-prompt embeddings ~10x slower on a busy 2-core machine. None: torch's default.
    torch_threads: int | None = 1


# ---- routers ------------------------------------------------------------------------------


@dataclass
class LoadedRouter:
    router: object
    key: str
    calibration_key: str | None
    threshold: float
    threshold_source: str
    scores: np.ndarray | None  # the calibration sample's strong_win_rate (for tela-auto@share)
    target_share: float | None = None

    def predict(self, prompts: list[str]) -> tuple[list[dict], np.ndarray]:
        q = self.router.predict_quality(prompts)
        score = self.router.strong_win_rate(prompts, quality=q)
        return q.to_dict(orient="records"), np.asarray(score, dtype=float)


def latest_calibration(store: ArtifactStore, router_key: str) -> tuple[str, dict] | None:
    """(artifact key, calibration.json) of the newest complete threshold calibration of
    `router_key` in `store`, or None."""
    from router_tasks.core.stage import find_complete

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


def load_serving_router(ref: str, store: ArtifactStore) -> LoadedRouter:
    from router_tasks.routers import EmbeddingRouter, load_router, resolve_router_key
    from router_tasks.routers.embeddings import Embedder

    rstore, key = resolve_router_key(ref, store)
    router = load_router(key, rstore)
    if isinstance(router, EmbeddingRouter):
        # In memory only: the store-backed cache lists and writes a shard per call, which
        # costs far more than embedding one prompt (the packaged seed still serves).
        router.embedder = Embedder(None)
    found = latest_calibration(rstore, key)
    if found is None:
        log.warning("router %s has no stored calibration: tela-auto uses threshold %.2f, tela-auto@<share> is off",
                    key, DEFAULT_THRESHOLD)
        return LoadedRouter(router, key, None, DEFAULT_THRESHOLD, "default", None)
    art, cal = found
    try:
        scores = rstore.read_parquet(f"{art}/data.parquet")["strong_win_rate"].to_numpy(float)
    except (OSError, KeyError):
        scores = None
    return LoadedRouter(router, key, art, float(cal["threshold"]), art, scores, cal.get("target_strong_share"))


class RouterHolder:
    """The current router, swapped atomically on reload."""

    def __init__(self, ref: str, store: ArtifactStore, executor: ThreadPoolExecutor, metrics: Metrics):
        self.ref, self.store, self.executor, self.metrics = ref, store, executor, metrics
        self.current: LoadedRouter | None = None
        self.reloads = 0
        self.last_error: str | None = None

    def _resolve(self) -> tuple[str, str | None]:
        from router_tasks.routers import resolve_router_key

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
            loaded = await loop.run_in_executor(self.executor, load_serving_router, key, self.store)
            loaded.predict(["warm up"])  # first call loads the embedding model: not on a request
        except Exception as err:  # keep serving the router we have
            self.last_error = f"{type(err).__name__}: {err}"
            log.warning("router reload failed, keeping %s: %s", getattr(self.current, "key", None), self.last_error)
            return False
        old, self.current = self.current, loaded
        self.reloads += old is not None
        self.last_error = None
        self.metrics.clear("tela_router_info")
        self.metrics.set("tela_router_info", "The router serving requests (1).", 1, key=loaded.key,
                         kind=loaded.router.kind, threshold=f"{loaded.threshold:.6g}")
        log.info("serving router %s (%s), threshold %.6f from %s%s", loaded.key, loaded.router.kind,
                 loaded.threshold, loaded.threshold_source, "" if old is None else f"; replaced {old.key}")
        return True


class DecisionBatcher:
    """Prompts of concurrent requests, scored together in the worker thread."""

    def __init__(self, executor: ThreadPoolExecutor, max_batch: int = 64):
        self.executor, self.max_batch = executor, max_batch
        self._pending: list = []
        self._running = False
        self.batches = 0
        self.batch_sizes: list[int] = []

    async def predict(self, loaded: LoadedRouter, prompt: str) -> tuple[dict, float]:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((loaded, prompt, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                groups: dict[int, tuple[LoadedRouter, list]] = {}
                for loaded, prompt, fut in batch:  # a reload mid-queue: each keeps its router
                    groups.setdefault(id(loaded), (loaded, []))[1].append((prompt, fut))
                for loaded, items in groups.values():
                    self.batches += 1
                    self.batch_sizes.append(len(items))
                    try:
                        quality, score = await loop.run_in_executor(
                            self.executor, loaded.predict, [p for p, _ in items])
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


# ---- upstreams ----------------------------------------------------------------------------


class UpstreamError(Exception):
    def __init__(self, model: str, text: str, status: int | None = None, retryable: bool = True, body=None):
        super().__init__(f"{model}: {text}")
        self.model, self.text, self.status, self.retryable, self.body = model, text, status, retryable, body


@dataclass
class Upstream:
    endpoint: Endpoint
    client: object
    fails_in_row: int = 0
    cooldown_until: float = 0.0
    cooldowns: int = 0

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until


def _describe(err: Exception) -> tuple[str, int | None, bool]:
    """(key-free text, HTTP status, whether another upstream may succeed)."""
    import openai

    if isinstance(err, openai.APIStatusError):
        s = err.status_code
        return f"HTTP {s}", s, s >= 500 or s in RETRYABLE_STATUS
    if isinstance(err, openai.APITimeoutError):
        return "timeout", None, True
    if isinstance(err, openai.APIConnectionError):
        return f"connection error ({type(err.__cause__ or err).__name__})", None, True
    return type(err).__name__, None, True


def _error_body(err: Exception):
    import openai

    if isinstance(err, openai.APIStatusError):
        try:
            return err.response.json()
        except Exception:
            return None
    return None


# ---- the app ------------------------------------------------------------------------------


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _last_user_text(messages: list) -> str | None:
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, str):
            return c
        if isinstance(c, list):
            return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    return None


def _check_body(body) -> tuple[str, str] | None:
    """(message, param) of the first thing wrong with a chat request body, else None."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object", None
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        return "you must provide a model parameter (a non-empty string)", "model"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty array of message objects", "messages"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "'stream' must be a boolean", "stream"
    return None


class Gateway:
    def __init__(self, config: GatewayConfig):
        import openai

        self.config = config
        self.store = ArtifactStore(config.artifact_root)
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tela-route")
        self.holder = RouterHolder(config.router, self.store, self.executor, self.metrics)
        self.batcher = DecisionBatcher(self.executor, config.max_batch)
        self.upstreams: dict[str, Upstream] = {}
        for ep in config.endpoints:
            client = openai.AsyncOpenAI(
                api_key=ep.api_key(), base_url=None if ep.is_local else ep.base_url,
                timeout=ep.request_timeout(), max_retries=ep.max_retries)
            self.upstreams[ep.name] = Upstream(ep, client)
        self.by_model_id = {ep.model: ep.name for ep in config.endpoints}
        self.traffic = None
        self._reload_task = None

    # -- lifecycle
    async def start(self) -> None:
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(int(self.config.torch_threads))
        if self.config.log_traffic:
            self.traffic = TrafficLog(self.store, keep_prompts=self.config.keep_prompts,
                                      flush_s=self.config.traffic_flush_s)
        await self.holder.refresh()
        if self.holder.current is None:
            if not self._no_champion_yet():
                raise RuntimeError(f"could not load router {self.config.router!r}: {self.holder.last_error}")
            # A fresh deployment starts its gateway before any pipeline run has published:
            # answer 503 until the champion appears (the reload loop loads it).
            log.warning("no champion yet in %s: answering 503 until one is published (looking every %.0f s)",
                        self.store.root, self.config.reload_s)
        self._reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

    def _no_champion_yet(self) -> bool:
        return self.config.router == "champion" and not self.store.exists(CHAMPION_KEY)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_s)
            await self.holder.refresh()

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        if self.traffic is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.traffic.close)
        for up in self.upstreams.values():
            await up.client.close()
        self.executor.shutdown(wait=False)

    # -- upstream calls
    def _chain_available(self, chain: list[str]) -> list[str]:
        now = time.monotonic()
        ok = [m for m in chain if not self.upstreams[m].cooling(now)]
        return ok or chain  # every one cooling: try them anyway rather than refuse

    def _failed(self, up: Upstream, err: UpstreamError) -> None:
        name = up.endpoint.name
        self.metrics.inc("tela_upstream_errors_total", "Upstream calls that failed after retries.", model=name,
                         error=err.text.split(" (")[0])
        up.fails_in_row += 1
        if up.fails_in_row >= self.config.cooldown_fails:
            up.cooldown_until = time.monotonic() + self.config.cooldown_s
            up.cooldowns += 1
            up.fails_in_row = 0
            self.metrics.inc("tela_upstream_cooldowns_total", "Times an upstream was put in cooldown.", model=name)
            log.warning("upstream %s failed %d times in a row: cooldown %.0f s", name, self.config.cooldown_fails,
                        self.config.cooldown_s)

    async def _open(self, up: Upstream, body: dict, stream: bool):
        ep = up.endpoint
        rest = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
        try:
            if stream:
                cm = up.client.chat.completions.with_streaming_response.create(
                    model=ep.model, messages=body["messages"], stream=True, extra_body=rest)
                resp = await cm.__aenter__()
                return cm, resp
            raw = await up.client.chat.completions.with_raw_response.create(
                model=ep.model, messages=body["messages"], extra_body=rest)
            return None, json.loads(raw.content)
        except Exception as err:
            text, status, retryable = _describe(err)
            log.debug("upstream %s failed: %s", ep.name, text)
            raise UpstreamError(ep.name, text, status, retryable, _error_body(err)) from None

    # -- the endpoint
    async def chat(self, request):
        started = time.perf_counter()
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return openai_error(400, "the request body is not valid JSON")
        problem = _check_body(body)
        if problem:
            return openai_error(400, problem[0], param=problem[1])
        try:
            policy = parse_model_name(body["model"])
        except PolicyError as err:
            return openai_error(400, str(err), param="model", code="invalid_policy")
        stream = bool(body.get("stream"))
        prompt = _last_user_text(body["messages"])
        loaded = self.holder.current
        if loaded is None:
            return openai_error(503, "no router loaded yet", "server_error")
        routing = {"policy": policy.name, "router": None, "score": None, "threshold": None, "decision_ms": 0.0}
        if policy.routed:
            if policy.kind == "threshold" and policy.router_kind not in (loaded.router.kind, "tela"):
                return openai_error(400, f"model {policy.name!r}: this gateway serves a {loaded.router.kind!r} "
                                         f"router; use router-{loaded.router.kind}-<threshold>", param="model")
            if prompt is None or not prompt.strip():
                return openai_error(400, "no user message with text to route on", param="messages")
            t0 = time.perf_counter()
            try:
                quality, score = await self.batcher.predict(loaded, prompt)
            except Exception as err:
                log.exception("routing failed")
                return openai_error(500, f"routing failed: {type(err).__name__}", "server_error")
            r = loaded.router
            prices = {n: (u.endpoint.price_input_per_m, u.endpoint.price_output_per_m) for n, u in self.upstreams.items()}
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 256
            costs = request_cost(prices, len(prompt) / 4, float(max_tokens))
            try:
                d = decide(policy, quality=quality, score=score, strong=r.strong_model, weak=r.weak_model,
                           threshold=loaded.threshold, share_threshold=threshold_for_share_from(loaded.scores),
                           costs=costs, available=list(self.upstreams))
            except PolicyError as err:
                return openai_error(400, str(err), param="model", code="invalid_policy")
            decision_ms = 1000 * (time.perf_counter() - t0)
            self.metrics.observe("tela_decision_seconds", "Routing decision time (queue + embedding + policy).",
                                 decision_ms / 1000, policy=policy.kind)
            chain = self._chain_available(d.chain)
            if chain[0] != d.model:
                log.info("first choice %s is cooling down: starting with %s", d.model, chain[0])
            routing.update(router=loaded.key, score=round(d.score, 6), decision_ms=round(decision_ms, 3),
                           threshold=None if d.threshold is None else round(d.threshold, 6), chosen=d.model)
        else:
            name = policy.name if policy.name in self.upstreams else self.by_model_id.get(policy.name)
            if name is None:
                return openai_error(404, f"The model `{policy.name}` does not exist: it is neither a routing "
                                         f"policy nor one of the upstreams {sorted(self.upstreams)}",
                                    param="model", code="model_not_found")
            chain = [name]
            routing["chosen"] = name

        errors: list[UpstreamError] = []
        for model in chain:
            up = self.upstreams[model]
            t_up = time.perf_counter()
            try:
                cm, result = await self._open(up, body, stream)
            except UpstreamError as err:
                if not err.retryable:  # the caller's mistake: every upstream would refuse it
                    self._log(body, prompt, policy, routing, model, chain, started, t_up, None, err.status or 400,
                              err.text, stream)
                    if isinstance(err.body, dict) and "error" in err.body:
                        from starlette.responses import JSONResponse

                        return JSONResponse(err.body, status_code=err.status or 400)
                    return openai_error(err.status or 400, f"upstream {model} refused the request: {err.text}")
                self._failed(up, err)
                errors.append(err)
                continue
            up.fails_in_row = 0
            fallback = model != chain[0] or model != routing.get("chosen")
            routing.update(model=model, fallback=fallback, fallback_from=[e.model for e in errors] or None)
            if fallback:
                self.metrics.inc("tela_fallbacks_total", "Requests answered by a fallback upstream.",
                                 to=model, **{"from": errors[0].model if errors else routing.get("chosen")})
            headers = {
                "x-tela-model": model, "x-tela-router": str(routing["router"] or ""),
                "x-tela-score": "" if routing["score"] is None else f"{routing['score']:.6f}",
                "x-tela-threshold": "" if routing["threshold"] is None else f"{routing['threshold']:.6f}",
                "x-tela-decision-ms": f"{routing['decision_ms']:.3f}",
                "x-tela-fallback": "true" if fallback else "false",
            }
            if not stream:
                upstream_s = time.perf_counter() - t_up
                result["tela_routing"] = routing
                usage = result.get("usage") or {}
                self._log(body, prompt, policy, routing, model, chain, started, t_up, usage, 200, None, stream,
                          upstream_s=upstream_s)
                from starlette.responses import JSONResponse

                return JSONResponse(result, headers=headers)
            return self._stream(cm, result, headers, body, prompt, policy, routing, model, chain, started, t_up)

        detail = "; ".join(f"{e.model}: {e.text}" for e in errors)
        self._log(body, prompt, policy, routing, chain[-1], chain, started, started, None, 502, detail, stream)
        self.metrics.inc("tela_requests_total", "Chat requests by policy, model and status.", policy=policy.kind,
                         model="none", status="502")
        return openai_error(502, f"every upstream failed: {detail}", "upstream_error", code="upstream_unavailable",
                            headers={"x-tela-fallback": "true" if len(errors) > 1 else "false"})

    def _stream(self, cm, resp, headers, body, prompt, policy, routing, model, chain, started, t_up):
        from starlette.responses import StreamingResponse

        async def gen():
            first, usage, chunks, status, err = True, None, 0, 200, None
            try:
                async for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data != "[DONE]":
                        chunks += 1
                        try:
                            obj = json.loads(data)
                        except ValueError:
                            obj = None
                        if isinstance(obj, dict):
                            usage = obj.get("usage") or usage
                            if first:
                                obj["tela_routing"] = routing
                                data = json.dumps(obj)
                                first = False
                    yield f"data: {data}\n\n".encode()
            except Exception as e:  # the stream broke after headers went out: nothing to fall back to
                status, err = 502, _describe(e)[0]
                log.warning("upstream %s stream broke: %s", model, err)
            finally:
                await cm.__aexit__(None, None, None)
                self._log(body, prompt, policy, routing, model, chain, started, t_up,
                          usage or {"completion_tokens": max(chunks - 2, 0)}, status, err, True,
                          upstream_s=time.perf_counter() - t_up)

        return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)

    def _log(self, body, prompt, policy: Policy, routing, model, chain, started, t_up, usage, status, error, stream,
             upstream_s: float | None = None):
        usage = usage or {}
        tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        ep = self.upstreams[model].endpoint if model in self.upstreams else None
        cost = ep.dollars(tin, tout) if ep is not None else 0.0
        if status == 200:
            self.metrics.inc("tela_requests_total", "Chat requests by policy, model and status.", policy=policy.kind,
                             model=model, status="200")
            self.metrics.inc("tela_cost_dollars_total", "Upstream cost of answered requests.", cost, model=model)
            self.metrics.inc("tela_tokens_total", "Tokens by model and direction.", tin, model=model, kind="input")
            self.metrics.inc("tela_tokens_total", "Tokens by model and direction.", tout, model=model, kind="output")
            if upstream_s is not None:
                self.metrics.observe("tela_upstream_seconds", "Upstream call time.", upstream_s, model=model)
        if self.traffic is None:
            return
        self.traffic.append({
            "request_id": uuid.uuid4().hex, "prompt": prompt, "policy": policy.name, "router_key": routing.get("router"),
            "score": routing.get("score"), "threshold": routing.get("threshold"), "model": model,
            "fallback": bool(routing.get("fallback")),
            "fallback_from": ",".join(routing.get("fallback_from") or []) or None,
            "status": int(status), "error": error, "decision_ms": float(routing.get("decision_ms") or 0.0),
            "upstream_latency_s": upstream_s, "input_tokens": tin, "output_tokens": tout, "cost_usd": cost,
            "stream": bool(stream),
        })

    async def models(self, request):
        from starlette.responses import JSONResponse

        now = int(time.time())
        kind = self.holder.current.router.kind if self.holder.current else "knn"
        names = [AUTO, f"{AUTO}@0.5", f"router-{kind}-0.5", "tela-cheapest@0.8", "tela-budget@1.0",
                 *self.upstreams]
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "created": now, "owned_by": "tela" if n not in self.upstreams else "upstream"}
            for n in names]})

    async def health(self, request):
        from starlette.responses import JSONResponse

        cur = self.holder.current
        now = time.monotonic()
        body = {
            "status": "ok" if cur else "loading",
            "router": None if cur is None else {"key": cur.key, "kind": cur.router.kind, "threshold": cur.threshold,
                                                "threshold_source": cur.threshold_source},
            "reloads": self.holder.reloads, "reload_error": self.holder.last_error,
            "upstreams": {n: {"model": u.endpoint.model, "cooldown_s_left": round(max(0.0, u.cooldown_until - now), 3)}
                          for n, u in self.upstreams.items()},
        }
        return JSONResponse(body, status_code=200 if cur else 503)

    async def prometheus(self, request):
        from starlette.responses import PlainTextResponse

        now = time.monotonic()
        for n, u in self.upstreams.items():
            self.metrics.set("tela_upstream_cooldown", "1 while the upstream is in cooldown.", int(u.cooling(now)),
                             model=n)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(config: GatewayConfig):
    """The ASGI app (Starlette); starting it loads the router, stopping it flushes the traffic log."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    gw = Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    async def not_found(request, exc):
        return openai_error(404, f"no route {request.method} {request.url.path}", code="not_found")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", gw.chat, methods=["POST"]),
            Route("/v1/models", gw.models, methods=["GET"]),
            Route("/health", gw.health, methods=["GET"]),
            Route("/metrics", gw.prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found},
    )
    app.state.gateway = gw
    return app


@dataclass
class RunningGateway:
    server: object
    thread: threading.Thread
    app: object = None
    base_url: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_in_thread(config: GatewayConfig, host: str = "127.0.0.1", port: int = 0) -> RunningGateway:
    """Start the gateway under uvicorn in a daemon thread (tests, benchmarks); returns once
    it accepts requests. `stop()` shuts it down cleanly."""
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="tela-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start (see the log)")
        time.sleep(0.02)
    sock_port = server.servers[0].sockets[0].getsockname()[1]
    return RunningGateway(server, thread, app, f"http://{host}:{sock_port}/v1")


def serve(config: GatewayConfig, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, access_log=access_log, log_level="info")
