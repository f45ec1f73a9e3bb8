"""The routing gateway: an OpenAI-compatible HTTP app that routes each chat request through
the champion router to one of the pipeline's upstream endpoints.

    POST /v1/chat/completions   stream and non-stream; every other field passed through
    POST /v1/feedback           {"id": <chat completion id>, "score": 1-5, "comment"?}
    GET  /v1/models             the policy names and the upstreams
    GET  /health                router key, kind, representation; cooldowns (503 until a router is loaded)
    GET  /metrics               Prometheus text

A chat request, top to bottom (`chat`): the client key and its limits (`limits`), the body
under its size cap and parsed (`parsing`), the policy its model name asks for (`policy`),
the routing decision for its prompt (`decisions`: batched, off the event loop), then the
upstreams of the fallback chain in order (`upstream`) until one answers; a stream is
relayed by `streams`. Each request leaves one traffic-log row (`traffic.TrafficRecord`)
and its metrics; the answered cost is charged to the key's day.

Nothing here grows with the requests served: the router holder keeps one router (two
during a swap), the batcher keeps counters, metrics are keyed by bounded label sets (policy
kind, upstream, status, key name), the traffic and feedback logs hold at most their
pending rows, and the embedding cache is the router's, bounded by its own cap.

Secrets: upstream keys live only in the upstream session's headers; the caller's key is
hashed to find its name and never forwarded, logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from router_tasks.core.schemas import CHAMPION_KEY
from router_tasks.core.store import ArtifactStore
from router_tasks.routing.policy import AUTO, Policy, PolicyError, decide, parse_model_name, request_cost
from router_tasks.serving.config import GatewayConfig
from router_tasks.serving.decisions import DecisionBatcher, LoadedRouter, RouterHolder
from router_tasks.serving.feedback import FeedbackLog, parse_feedback
from router_tasks.serving.keys import ClientKey
from router_tasks.serving.limits import ClientAuth, MemoryCounters, RedisCounters
from router_tasks.serving.metrics import Metrics
from router_tasks.serving.parsing import (
    ApiError,
    check_chat_body,
    encode_json,
    last_user_text,
    openai_error,
    parse_json,
    read_body,
)
from router_tasks.serving.streams import StreamRelay
from router_tasks.serving.traffic import TrafficLog, TrafficRecord
from router_tasks.serving.upstream import Upstream, UpstreamError, Upstreams

log = logging.getLogger(__name__)

_libc_name = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_libc_name) if _libc_name else None
if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):  # not glibc (musl, macOS): nothing to trim
    _LIBC = None

REQUESTS = ("tela_requests_total", "Chat requests by policy, model, status and client key.")
REFUSED = ("tela_refused_total", "Requests refused before an upstream was asked, by status and reason.")


@dataclass
class ChatCall:
    """One chat request on its way through the handlers: the parsed body and its size (the
    re-encoded payload's cap), the policy its model name asks for, the client key, the
    traffic-log row it leaves and when it arrived (`time.perf_counter`)."""

    body: dict
    size: int
    policy: Policy
    client: ClientKey
    record: TrafficRecord
    started: float


def _splice(raw: bytes, extra: bytes) -> bytes:
    """`raw` (a JSON object) with `"tela_routing": extra` added before its closing brace."""
    end = raw.rstrip().rfind(b"}")
    return raw[:end] + b',"tela_routing":' + extra + b"}"


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.store = ArtifactStore(config.artifact_root)
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tela-route")
        self.holder = RouterHolder(config.router, self.store, self.executor, self.metrics, config.route_chars)
        self.batcher = DecisionBatcher(self.executor, config.max_batch, self.metrics)
        self.upstreams = Upstreams(config.endpoints, self.metrics, config.cooldown_fails, config.cooldown_s)
        counters = RedisCounters(config.redis_url) if config.redis_url else MemoryCounters()
        self.auth = ClientAuth(config.keys_file, counters)
        self.traffic: TrafficLog | None = None
        self.feedback: FeedbackLog | None = None
        self._tasks: list[asyncio.Task] = []
        self._charging: set[asyncio.Task] = set()  # spend charges of streams, at most one per open stream

    # -- lifecycle
    async def start(self) -> None:
        if self.config.torch_threads:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, _set_torch_threads, self.config.torch_threads
            )
        await self.upstreams.start()
        if self.config.log_traffic:
            self.traffic = TrafficLog(
                self.store, keep_prompts=self.config.keep_prompts, flush_s=self.config.traffic_flush_s
            )
        self.feedback = FeedbackLog(
            self.store, keep_comments=self.config.keep_prompts, flush_s=self.config.traffic_flush_s
        )
        await self.holder.refresh()
        if self.holder.current is None:
            if not self._no_champion_yet():
                raise RuntimeError(f"could not load router {self.config.router!r}: {self.holder.last_error}")
            # A fresh deployment starts its gateway before any pipeline run has published:
            # answer 503 until the champion appears (the reload loop loads it).
            log.warning(
                "no champion yet in %s: answering 503 until one is published (looking every %.0f s)",
                self.store.root,
                self.config.reload_s,
            )
        self._tasks = [
            asyncio.create_task(self._every(self.config.reload_s, self.holder.refresh)),
            asyncio.create_task(self._every(self.config.keys_reload_s, self._reload_keys)),
        ]
        if self.config.trim_s and _LIBC is not None:
            self._tasks.append(asyncio.create_task(self._every(self.config.trim_s, self._trim)))

    def _no_champion_yet(self) -> bool:
        return self.config.router == "champion" and not self.store.exists(CHAMPION_KEY)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.upstreams.close()
        await self.auth.close()
        for segment_log in (self.traffic, self.feedback):
            if segment_log is not None:
                await asyncio.to_thread(segment_log.close)
        self.executor.shutdown(wait=False)

    @staticmethod
    async def _every(seconds: float, fn) -> None:
        while True:
            await asyncio.sleep(seconds)
            with contextlib.suppress(Exception):
                await fn()

    async def _reload_keys(self) -> None:
        self.auth.reload()

    async def _trim(self) -> None:
        """Hand freed heap back to the system. Scoring batches of every size leaves glibc's
        heap fragmented: without this a gateway's RSS creeps up with the requests served,
        though nothing it keeps grows. Runs in the routing thread, between batches."""
        await asyncio.get_running_loop().run_in_executor(self.executor, _LIBC.malloc_trim, 0)

    # -- POST /v1/chat/completions
    async def chat(self, request) -> Response:
        started = time.perf_counter()
        client = await self._admit(request)
        raw = await read_body(request, self.config.max_body_bytes)
        body = await parse_json(raw)
        check_chat_body(body)
        try:
            policy = parse_model_name(body["model"])
        except PolicyError as err:
            raise ApiError(400, str(err), param="model", code="invalid_policy") from None
        loaded = self.holder.current
        if loaded is None:
            raise ApiError(503, "no router loaded yet", "server_error")
        record = TrafficRecord(
            policy.name, last_user_text(body["messages"]), key_name=_key_name(client), stream=body.get("stream") is True
        )
        call = ChatCall(body, len(raw), policy, client, record, started)
        chain, routing = await self._route(call, loaded)
        return await self._answer(call, chain, routing)

    async def _admit(self, request) -> ClientKey:
        return await self.auth.admit(request.headers.get("authorization"))

    def endpoint(self, fn):
        """A route handler whose ApiErrors become OpenAI-style error responses, counted in
        tela_refused_total unless the request was already logged as a request."""

        async def handle(request):
            try:
                return await fn(request)
            except ApiError as err:
                if not err.logged:
                    self.metrics.inc(*REFUSED, status=str(err.status), reason=err.code or err.type)
                return err.response()

        return handle

    async def _route(self, call: ChatCall, loaded: LoadedRouter) -> tuple[list[str], dict]:
        """(fallback chain, routing facts for the reply) for this request."""
        policy = call.policy
        if not policy.routed:
            return self._direct(policy)
        router = loaded.router
        if policy.kind == "threshold" and policy.router_kind not in (router.kind, "tela"):
            raise ApiError(
                400,
                f"model {policy.name!r}: this gateway serves a {router.kind!r} router; use "
                f"router-{router.kind}-<threshold>",
                param="model",
            )
        prompt = call.record.prompt
        if prompt is None or not prompt.strip():
            raise ApiError(400, "no user message with text to route on", param="messages")
        t0 = time.perf_counter()
        d = await self._decide(call, loaded, prompt)
        decision_ms = 1000 * (time.perf_counter() - t0)
        self.metrics.observe(
            "tela_decision_seconds",
            "Routing decision time (queue + scoring + policy).",
            decision_ms / 1000,
            policy=policy.kind,
        )
        chain = self.upstreams.available(d.chain)
        if chain[0] != d.model:
            log.debug("first choice %s is cooling down: starting with %s", d.model, chain[0])
        record = call.record
        threshold = None if d.threshold is None else round(d.threshold, 6)
        record.router_key, record.score, record.threshold = loaded.key, round(d.score, 6), threshold
        record.decision_ms = round(decision_ms, 3)
        return chain, {
            "policy": policy.name,
            "router": loaded.key,
            "representation": loaded.representation,
            "score": record.score,
            "threshold": threshold,
            "decision_ms": record.decision_ms,
            "chosen": d.model,
        }

    def _direct(self, policy: Policy) -> tuple[list[str], dict]:
        """An upstream named directly: no routing, no fallback."""
        name = self.upstreams.resolve(policy.name)
        if name is None:
            raise ApiError(
                404,
                f"The model `{policy.name}` does not exist: it is neither a routing policy nor "
                f"one of the upstreams {sorted(self.upstreams.names())}",
                param="model",
                code="model_not_found",
            )
        return [name], {
            "policy": policy.name,
            "router": None,
            "score": None,
            "threshold": None,
            "decision_ms": 0.0,
            "chosen": name,
        }

    async def _decide(self, call: ChatCall, loaded: LoadedRouter, prompt: str):
        """The policy's decision on the router's scores for `prompt` (scored in a batch, off the loop)."""
        try:
            quality, score = await self.batcher.predict(loaded, prompt)
        except Exception as err:
            log.exception("routing failed")
            raise ApiError(500, f"routing failed: {type(err).__name__}", "server_error") from None
        router = loaded.router
        max_tokens = call.body.get("max_tokens") or call.body.get("max_completion_tokens") or 256
        costs = request_cost(self.upstreams.prices, len(prompt) / 4, float(max_tokens))
        try:
            return decide(
                call.policy,
                quality=quality,
                score=score,
                strong=router.strong_model,
                weak=router.weak_model,
                threshold=loaded.threshold,
                share_threshold=loaded.share_threshold,
                costs=costs,
                available=self.upstreams.names(),
            )
        except PolicyError as err:
            raise ApiError(400, str(err), param="model", code="invalid_policy") from None

    async def _answer(self, call: ChatCall, chain: list[str], routing: dict) -> Response:
        """The first upstream of `chain` that answers; 502 naming each failure if none does."""
        errors: list[UpstreamError] = []
        for name in chain:
            up = self.upstreams.by_name[name]
            routing.update(
                model=name, fallback=name != routing["chosen"], fallback_from=[e.model for e in errors] or None
            )
            t_up = time.perf_counter()
            try:
                reply = await self._ask(call, name, up, routing)
            except UpstreamError as err:
                if not err.retryable:  # the caller's mistake: every upstream would refuse it
                    return await self._refused(call, name, err)
                self.upstreams.failed(up, err)
                errors.append(err)
                continue
            self.upstreams.succeeded(up)
            return await self._answered(call, reply, routing, errors, t_up)
        raise await self._all_failed(call, chain, errors)

    async def _ask(self, call: ChatCall, name: str, up: Upstream, routing: dict):
        """Upstream `name`'s answer: for a stream a `StreamRelay` primed with the routing facts
        (its first event read), else (raw reply bytes, parsed reply)."""
        payload = await encode_json({**call.body, "model": up.endpoint.model}, call.size)
        if not call.record.stream:
            return await self.upstreams.complete(up, payload)
        relay = StreamRelay(
            await self.upstreams.open(up, payload),
            name,
            bool((call.body.get("stream_options") or {}).get("include_usage")),
        )
        try:
            await relay.prime(routing)
        except BaseException:
            relay.resp.release()
            raise
        return relay

    async def _answered(
        self, call: ChatCall, reply, routing: dict, errors: list[UpstreamError], t_up: float
    ) -> Response:
        """The reply of the upstream that answered, with the routing facts in its headers and body."""
        record = call.record
        record.model, record.fallback = routing["model"], routing["fallback"]
        record.fallback_from = ",".join(routing["fallback_from"] or []) or None
        if record.fallback:
            self.metrics.inc(
                "tela_fallbacks_total",
                "Requests answered by a fallback upstream.",
                to=routing["model"],
                **{"from": errors[0].model if errors else routing["chosen"]},
            )
        headers = _routing_headers(routing)
        if record.stream:
            return _Stream(self._relay(call, reply, t_up), media_type="text/event-stream", headers=headers)
        raw, parsed = reply
        record.completion_id = parsed.get("id") if isinstance(parsed.get("id"), str) else None
        record.upstream_latency_s = time.perf_counter() - t_up
        await self._finish(call, parsed.get("usage"))
        return Response(
            _splice(raw, json.dumps(routing, separators=(",", ":")).encode()),
            media_type="application/json",
            headers=headers,
        )

    async def _refused(self, call: ChatCall, name: str, err: UpstreamError) -> Response:
        """Upstream `name` refused the request as the caller's mistake: its error, logged as such."""
        record = call.record
        record.model, record.status, record.error = name, err.status or 400, err.text
        await self._finish(call, None)
        own = err.error_json()
        if own is not None:
            return JSONResponse(own, status_code=err.status or 400)
        raise ApiError(err.status or 400, f"upstream {name} refused the request: {err.text}", logged=True) from None

    async def _all_failed(self, call: ChatCall, chain: list[str], errors: list[UpstreamError]) -> ApiError:
        """Every upstream of `chain` failed: log it; the 502 naming each failure."""
        detail = "; ".join(f"{e.model}: {e.text}" for e in errors)
        record = call.record
        record.model, record.status, record.error = chain[-1], 502, detail
        record.fallback_from = ",".join(e.model for e in errors) or None
        await self._finish(call, None, model_label="none")
        return ApiError(
            502,
            f"every upstream failed: {detail}",
            "upstream_error",
            code="upstream_unavailable",
            headers={"x-tela-fallback": "true" if len(errors) > 1 else "false"},
            logged=True,
        )

    async def _relay(self, call: ChatCall, relay: StreamRelay, t_up: float):
        record = call.record
        stream = relay.relay()
        try:
            async for data in stream:
                yield data
        finally:  # also when the client hung up (closed by _Stream): nothing here waits on I/O
            await stream.aclose()  # releases the upstream connection now, not when collected
            record.completion_id = relay.completion_id
            record.upstream_latency_s = time.perf_counter() - t_up
            if relay.error is not None:
                record.status, record.error = 502, relay.error
            # without the upstream's usage (not asked for, or the client left first): the
            # prompt at ~4 characters a token, a token per content chunk relayed
            usage = relay.usage or {
                "prompt_tokens": math.ceil(len(record.prompt or "") / 4),
                "completion_tokens": max(relay.chunks - 1, 0),
            }
            cost = self._record(call, usage)
            if cost > 0 and call.client.usd_per_day is not None:
                task = asyncio.get_running_loop().create_task(self.auth.charge(call.client, cost))
                self._charging.add(task)
                task.add_done_callback(self._charging.discard)

    async def _finish(self, call: ChatCall, usage: dict | None, model_label: str | None = None) -> None:
        """Record the request and charge its cost to the key."""
        await self.auth.charge(call.client, self._record(call, usage, model_label))

    def _record(self, call: ChatCall, usage: dict | None, model_label: str | None = None) -> float:
        """Count the request in the metrics and log its row; returns its cost in dollars."""
        record = call.record
        usage = usage if isinstance(usage, dict) else {}
        tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        up = self.upstreams.by_name.get(record.model)
        cost = up.endpoint.dollars(tin, tout) if up is not None and record.status == 200 else 0.0
        record.input_tokens, record.output_tokens, record.cost_usd = tin, tout, cost
        model = model_label or record.model
        key = call.client.name
        kind = call.policy.kind
        self.metrics.inc(*REQUESTS, policy=kind, model=model, status=str(record.status), key=key)
        if record.status == 200:
            self.metrics.inc(
                "tela_cost_dollars_total", "Upstream cost of answered requests.", cost, model=model, key=key
            )
            self.metrics.inc("tela_tokens_total", "Tokens by model and direction.", tin, model=model, kind="input")
            self.metrics.inc("tela_tokens_total", "Tokens by model and direction.", tout, model=model, kind="output")
            if record.upstream_latency_s is not None:
                self.metrics.observe(
                    "tela_upstream_seconds", "Upstream call time.", record.upstream_latency_s, model=model
                )
            self.metrics.observe(
                "tela_request_seconds",
                "Time from request to answer, by policy kind.",
                time.perf_counter() - call.started,
                policy=kind,
            )
        if self.traffic is not None:
            self.traffic.append(record)
        return cost

    # -- POST /v1/feedback
    async def post_feedback(self, request) -> Response:
        client = await self._admit(request)
        raw = await read_body(request, min(self.config.max_body_bytes, 64 * 1024))
        completion_id, score, comment = parse_feedback(await parse_json(raw))
        self.feedback.record(completion_id, _key_name(client), score, comment)
        self.metrics.inc(
            "tela_feedback_total",
            "User ratings received (POST /v1/feedback), by score and key.",
            score=str(score),
            key=client.name,
        )
        return JSONResponse({"object": "feedback", "id": completion_id, "score": score, "recorded": True})

    # -- GET routes
    async def models(self, request) -> Response:
        await self._admit(request)
        now = int(time.time())
        kind = self.holder.current.router.kind if self.holder.current else "knn"
        names = [
            AUTO,
            f"{AUTO}@0.5",
            f"router-{kind}-0.5",
            "tela-cheapest@0.8",
            "tela-budget@1.0",
            *self.upstreams.names(),
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": n,
                        "object": "model",
                        "created": now,
                        "owned_by": "tela" if n not in self.upstreams.by_name else "upstream",
                    }
                    for n in names
                ],
            }
        )

    async def health(self, request) -> Response:
        cur = self.holder.current
        now = time.monotonic()
        body = {
            "status": "ok" if cur else "loading",
            "router": None if cur is None else cur.info(),
            "reloads": self.holder.reloads,
            "reload_error": self.holder.last_error,
            "pid": os.getpid(),  # which --workers process answered
            "auth": "keys" if self.auth.enabled else "none",
            "limits": "redis" if self.config.redis_url else "process",
            "upstreams": {
                n: {"model": u.endpoint.model, "cooldown_s_left": round(max(0.0, u.cooldown_until - now), 3)}
                for n, u in self.upstreams.by_name.items()
            },
        }
        return JSONResponse(body, status_code=200 if cur else 503)

    async def prometheus(self, request) -> Response:
        now = time.monotonic()
        for n, u in self.upstreams.by_name.items():
            self.metrics.set(
                "tela_upstream_cooldown", "1 while the upstream is in cooldown.", int(u.cooling(now)), model=n
            )
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")


class _Stream(StreamingResponse):
    """A streaming response whose body is closed however the response ends: a client that
    hangs up raises out of `send`, which would leave the body generator (and its upstream
    connection, its traffic-log row, its key's charge) waiting for garbage collection."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _key_name(client: ClientKey) -> str | None:
    return None if client.name == "none" and not client.limited else client.name


def _set_torch_threads(n: int) -> None:
    import torch  # heavy: only where a router may use it

    torch.set_num_threads(n)


def _routing_headers(routing: dict) -> dict:
    return {
        "x-tela-model": routing["model"],
        "x-tela-router": str(routing["router"] or ""),
        "x-tela-representation": str(routing.get("representation") or ""),
        "x-tela-score": "" if routing["score"] is None else f"{routing['score']:.6f}",
        "x-tela-threshold": "" if routing["threshold"] is None else f"{routing['threshold']:.6f}",
        "x-tela-decision-ms": f"{routing['decision_ms']:.3f}",
        "x-tela-fallback": "true" if routing["fallback"] else "false",
    }


def create_app(config: GatewayConfig) -> Starlette:
    """The ASGI app (Starlette); starting it loads the router, stopping it flushes the logs."""
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

    async def wrong_method(request, exc):
        return openai_error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", gw.endpoint(gw.chat), methods=["POST"]),
            Route("/v1/feedback", gw.endpoint(gw.post_feedback), methods=["POST"]),
            Route("/v1/models", gw.endpoint(gw.models), methods=["GET"]),
            Route("/health", gw.health, methods=["GET"]),
            Route("/metrics", gw.prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: wrong_method},
    )
    app.state.gateway = gw
    return app
