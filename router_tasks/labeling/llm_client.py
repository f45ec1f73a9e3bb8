"""Chat calls to OpenAI-compatible endpoints, shared by the generate and judge stages.

An `Endpoint` (`router_tasks.core.endpoints`) is plain config: which model to call where,
with what decoding settings; its key is read from the environment only when a client is
built. The special base_url "local" starts the bundled SmolLM2 server
(`router_tasks.labeling.llm_server`) for the duration of the calls.

Calls go through the official `openai` client, which retries connection errors, 408,
409, 429 and 5xx with exponential backoff (honouring Retry-After) and enforces the
timeout; a thread pool caps the requests in flight per endpoint. A request that still
fails comes back as a `ChatResult` with `error` set, so a caller records it instead of
losing the row. Error texts are redacted (`redact_secrets`) before they are stored or logged.

A circuit breaker stops an endpoint's calls at once (`EndpointDown`, naming the endpoint
and the HTTP status) on 401/403, on 404 (a model or path that does not exist), or after
`max_consecutive_failures` failures in a row: a bad key or a dead URL fails a part in a
few requests instead of retrying every row with backoff for hours.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

from router_tasks.core.endpoints import Endpoint
from router_tasks.labeling.call_errors import describe_error, redact_secrets, reject_malformed_json, status_of
from router_tasks.labeling.local_server import local_llm_server
from router_tasks.labeling.request_cache import RequestCache, request_key

log = logging.getLogger(__name__)


@dataclass
class ChatResult:
    answer: str | None
    finish_reason: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    latency_s: float
    cached: bool = False  # served from the request cache: no call made, nothing paid
    status: int | None = None  # the HTTP status of a failed call, when there was one
    # Per token of the answer, when asked for and returned: {"token", "logprob", "top":
    # [[alternative, logprob], ...]}; what the caller kept of it once cached (`ask_all`).
    logprobs: list | None = None


#: request options the `openai` client takes as arguments; any other option (a server's
#: extension, e.g. vLLM's `continue_final_message`) goes in the request body as is
CLIENT_OPTIONS = ("logprobs", "top_logprobs")


def token_logprobs(choice) -> list | None:
    """The compact per-token log-probabilities of a response choice, or None without them."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [
        {
            "token": t.token,
            "logprob": float(t.logprob),
            "top": [[a.token, float(a.logprob)] for a in (t.top_logprobs or [])],
        }
        for t in content
    ]


class EndpointDown(RuntimeError):
    """The circuit breaker stopped an endpoint (bad key, unknown model, dead URL)."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


class ChatClient:
    """One endpoint, bound to a concrete base URL (the local server's, if 'local')."""

    def __init__(self, endpoint: Endpoint, base_url: str | None = None):
        import openai

        self.endpoint = endpoint
        self.base_url = base_url if base_url is not None else (None if endpoint.is_local else endpoint.base_url)
        self._lock = threading.Lock()
        self.requests = 0  # calls asked of the client
        self.attempts = 0  # HTTP requests it sent for them: retries included
        self._client = openai.OpenAI(
            api_key=endpoint.api_key(),
            base_url=self.base_url,
            timeout=endpoint.request_timeout(),
            max_retries=endpoint.max_retries,
            # The client retries inside one create() call; an httpx hook sees every attempt.
            http_client=openai.DefaultHttpxClient(
                event_hooks={"request": [self._count_attempt], "response": [reject_malformed_json]}
            ),
        )

    def _count_attempt(self, request) -> None:
        with self._lock:
            self.attempts += 1

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        options: Mapping | None = None,
    ) -> ChatResult:
        """One chat call. `options`: further request fields (`logprobs`, `top_logprobs`, or a
        server's own such as vLLM's `continue_final_message`), sent as given."""
        ep = self.endpoint
        messages = ep.with_system_prompt(messages)
        options = dict(options or {})
        direct = {k: options.pop(k) for k in CLIENT_OPTIONS if k in options}
        with self._lock:
            self.requests += 1
        started = time.monotonic()
        try:
            resp = self._client.chat.completions.create(
                model=ep.model,
                messages=messages,
                max_tokens=max_tokens or ep.max_tokens,
                temperature=ep.temperature if temperature is None else temperature,
                **direct,
                **({"extra_body": options} if options else {}),
            )
        except Exception as err:  # noqa: BLE001 - recorded per row, never raised
            return ChatResult(
                None, None, describe_error(err), 0, 0, round(time.monotonic() - started, 3), status=status_of(err)
            )
        latency = round(time.monotonic() - started, 3)
        usage = resp.usage
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        if not resp.choices:
            return ChatResult(None, None, "empty response: no choices", tokens_in, tokens_out, latency)
        choice = resp.choices[0]
        content = choice.message.content if choice.message else None
        if content is None:  # e.g. a content filter or a refusal-only reply
            refusal = getattr(choice.message, "refusal", None) if choice.message else None
            why = f"refusal: {refusal}" if refusal else f"no content (finish_reason={choice.finish_reason})"
            return ChatResult(None, choice.finish_reason, redact_secrets(why[:500]), tokens_in, tokens_out, latency)
        return ChatResult(
            content, choice.finish_reason, None, tokens_in, tokens_out, latency, logprobs=token_logprobs(choice)
        )

    def close(self) -> None:
        self._client.close()


@contextlib.contextmanager
def open_endpoint(endpoint: Endpoint) -> Iterator[ChatClient]:
    """A client for `endpoint`; for base_url 'local', a server that lives as long as it."""
    _quiet_http_logs()
    if endpoint.is_local:
        with local_llm_server() as url:
            client = ChatClient(endpoint, base_url=url)
            try:
                yield client
            finally:
                client.close()
        return
    client = ChatClient(endpoint)
    try:
        yield client
    finally:
        client.close()


class EndpointSession:
    """An endpoint opened on first use and kept open until `close()`: a part that asks in
    batches starts the local server (or a connection pool) once, and not at all when every
    reply is cached."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._cm = None
        self._client: ChatClient | None = None

    def client(self) -> ChatClient:
        if self._client is None:
            self._cm = open_endpoint(self.endpoint)
            self._client = self._cm.__enter__()
        return self._client

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm, self._client = self._cm, None, None
            cm.__exit__(None, None, None)

    def __enter__(self) -> EndpointSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chat_many(
    client: ChatClient,
    conversations: Sequence[list[dict]],
    *,
    max_tokens: int | None = None,
    on_result: Callable[[int, ChatResult], None] | None = None,
    stop_if: Callable[[ChatResult], bool] | None = None,
    options: Mapping | None = None,
) -> list[ChatResult]:
    """Run every conversation, `endpoint.workers()` at a time; results in input order.

    `on_result(index, result)` is called in the calling thread as each one finishes
    (progress logging, checkpoints). `stop_if(result)` is asked in the worker thread that
    got the result: when true, no worker sends another request (the calling thread learns
    of it a moment later, and by then a worker would already have sent the next one);
    `on_result` is then expected to raise for that result.
    """
    results: list[ChatResult | None] = [None] * len(conversations)
    if not conversations:
        return []
    stopping = threading.Event()

    def call(conv: list[dict]) -> ChatResult | None:
        if stopping.is_set():
            return None  # never sent
        res = client.chat(conv, max_tokens=max_tokens, options=options)
        if stop_if is not None and stop_if(res):
            stopping.set()
        return res

    with ThreadPoolExecutor(max_workers=client.endpoint.workers(), thread_name_prefix="chat") as pool:
        futures = {pool.submit(call, conv): i for i, conv in enumerate(conversations)}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                if (res := fut.result()) is None:
                    continue  # skipped after a stop: the result that stopped it raises in on_result
                results[i] = res
                if on_result is not None:
                    on_result(i, res)
            if stopping.is_set():
                raise RuntimeError("chat_many: stopped by stop_if, but on_result did not raise")
        except BaseException:
            stopping.set()
            for fut in futures:  # don't start queued requests after a failure or a stop signal
                fut.cancel()
            # ...but the requests already on the wire will be paid for: hand their replies
            # to on_result (the request cache) before giving up, so no re-run pays twice.
            for fut, i in futures.items():
                if fut.cancelled() or results[i] is not None:
                    continue
                try:
                    if (res := fut.result()) is None:
                        continue
                    results[i] = res
                    if on_result is not None:
                        on_result(i, res)
                except BaseException:  # noqa: BLE001 - best effort while unwinding
                    pass
            raise
    return results  # type: ignore[return-value]


@dataclass
class CallStats:
    """What a batch of requests to one endpoint cost: the cost ledger's raw numbers."""

    requests: int = 0  # rows that needed a reply
    cached: int = 0  # of those, served from the request cache (no call, no cost)
    calls: int = 0  # calls made to the endpoint now
    attempts: int = 0  # HTTP requests those calls took: retries included
    failures: int = 0  # calls that still failed after the client's retries
    input_tokens: int = 0  # tokens billed now (successful calls only)
    output_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0

    @property
    def retries(self) -> int:
        return max(0, self.attempts - self.calls)

    def to_dict(self) -> dict:
        return {**asdict(self), "retries": self.retries, "dollars": round(self.dollars, 6)}


def endpoint_cache(endpoint: Endpoint, store, *, flush_every: int = 50):
    """The request cache of `endpoint` in `store`."""

    return RequestCache(
        store, base_url=endpoint.output_config()["base_url"], model=endpoint.model, flush_every=flush_every
    )


def request_keys(
    endpoint: Endpoint,
    conversations: Sequence[list[dict]],
    *,
    prompt_version: str,
    max_tokens: int | None = None,
    options: Mapping | None = None,
) -> tuple[list[list[dict]], list[str]]:
    """The messages as they will be sent, and their request-cache keys."""

    max_tokens = max_tokens or endpoint.max_tokens
    sent = [endpoint.with_system_prompt(c) for c in conversations]
    base = endpoint.output_config()["base_url"]
    keys = [
        request_key(
            base_url=base,
            model=endpoint.model,
            messages=m,
            max_tokens=max_tokens,
            temperature=endpoint.temperature,
            prompt_version=prompt_version,
            options=options,
        )
        for m in sent
    ]
    return sent, keys


def ask_all(
    endpoint: Endpoint,
    conversations: Sequence[list[dict]],
    *,
    store,
    prompt_version: str,
    label: str,
    role: str = "model",
    max_failure_rate: float = 1.0,
    max_tokens: int | None = None,
    flush_every: int = 50,
    partition: tuple[int, int] | None = None,
    session: EndpointSession | None = None,
    cache=None,
    options: Mapping | None = None,
    keep_logprobs: Callable[[list], list | None] | None = None,
) -> tuple[list[ChatResult], CallStats]:
    """Every conversation answered by `endpoint`, through the request cache.

    Replies cached from any earlier run (same endpoint, messages, sampling and
    `prompt_version`) come back with `cached=True` and cost nothing; the rest are asked,
    `endpoint.workers()` at a time, and each success is cached as it arrives. The
    endpoint (or the local server) is not even opened when everything is cached.

    If more than `max_failure_rate` of the requests (cached ones included) fail, raises
    RuntimeError: an artifact of errors (a bad key, a wrong URL) must not be stored and
    reused. What succeeded is cached for the re-run. The circuit breaker raises
    `EndpointDown` at once on a failure no retry mends.

    `partition` (shards, shard) is the request-cache partition of the rows asked (see
    `request_cache`); `session` keeps one client (one local server) open across calls
    made batch by batch; `cache` reuses a `RequestCache` already loaded. `options`: further
    request fields for every call (`ChatClient.chat`), part of the cache key;
    `keep_logprobs(tokens)`: what of a reply's token log-probabilities to keep (and cache),
    e.g. the few tokens a judge's verdict is read from.
    """
    started = time.monotonic()
    max_tokens = max_tokens or endpoint.max_tokens
    cache = cache if cache is not None else endpoint_cache(endpoint, store, flush_every=flush_every)
    sent, keys = request_keys(
        endpoint, conversations, prompt_version=prompt_version, max_tokens=max_tokens, options=options
    )
    stats = CallStats(requests=len(sent))
    results: list[ChatResult | None] = [None] * len(sent)
    todo: dict[str, list[int]] = {}  # key -> the rows that need it: identical requests are sent once
    for i, key in enumerate(keys):
        hit = cache.get(key, partition)
        if hit is None:
            todo.setdefault(key, []).append(i)
            continue
        results[i] = ChatResult(
            hit.answer,
            hit.finish_reason,
            None,
            hit.input_tokens,
            hit.output_tokens,
            0.0,
            cached=True,
            logprobs=hit.logprobs,
        )
        stats.cached += 1
    unique = list(todo)
    progress = Progress(f"{label} {endpoint.name}", len(unique))
    breaker = CircuitBreaker(endpoint, label=label, role=role)

    def got(j: int, res: ChatResult) -> None:
        key = unique[j]
        progress.update(res)
        if res.logprobs is not None and keep_logprobs is not None:
            res.logprobs = keep_logprobs(res.logprobs)
        if res.error is None and res.answer is not None:
            cache.put(
                key,
                answer=res.answer,
                finish_reason=res.finish_reason,
                input_tokens=res.input_tokens,
                output_tokens=res.output_tokens,
                partition=partition,
                logprobs=res.logprobs,
            )
            stats.input_tokens += res.input_tokens
            stats.output_tokens += res.output_tokens
        else:
            stats.failures += 1
        for n, i in enumerate(todo[key]):
            # a repeat of the same request in this batch: the same reply, not paid again
            repeat = n > 0
            results[i] = (
                res
                if not repeat
                else ChatResult(
                    res.answer,
                    res.finish_reason,
                    res.error,
                    res.input_tokens,
                    res.output_tokens,
                    0.0,
                    cached=res.error is None,
                    logprobs=res.logprobs,
                )
            )
            if repeat and res.error is None:
                stats.cached += 1
        breaker.record(res)  # raises EndpointDown: chat_many stops sending, the cache keeps what came

    if stats.cached:
        log.info("%s: %s: %d replies from the request cache", label, endpoint.name, stats.cached)
    if unique:
        log.info(
            "%s: asking %s (%s) for %d replies", label, endpoint.name, endpoint.public_dict()["base_url"], len(unique)
        )
        own = session is None
        session = session or EndpointSession(endpoint)
        client = session.client()
        calls0, attempts0 = client.requests, client.attempts
        try:
            chat_many(
                client,
                [sent[todo[k][0]] for k in unique],
                max_tokens=max_tokens,
                on_result=got,
                stop_if=breaker.is_fatal,
                options=options,
            )
        finally:
            cache.flush()  # however the calls end, what succeeded is kept
            stats.calls, stats.attempts = client.requests - calls0, client.attempts - attempts0
            if own:
                session.close()
    stats.dollars = endpoint.dollars(stats.input_tokens, stats.output_tokens)
    stats.seconds = round(time.monotonic() - started, 3)
    if stats.calls and stats.failures / max(stats.requests, 1) > max_failure_rate:
        first = next(r.error for r in results if r is not None and r.error is not None)
        raise RuntimeError(
            f"{label}: {stats.failures}/{stats.calls} calls to {role} {endpoint.name!r} failed "
            f"(over max_failure_rate={max_failure_rate}); first error: {first}. "
            f"Successful replies are cached; fix the endpoint and re-run."
        )
    return results, stats  # type: ignore[return-value]


class CircuitBreaker:
    """Stops an endpoint on a failure no retry can mend, or on a run of failures."""

    FATAL = {401: "the key was refused", 403: "access denied", 404: "no such model or path"}

    def __init__(self, endpoint: Endpoint, *, label: str, role: str):
        self.endpoint, self.label, self.role = endpoint, label, role
        self.consecutive = 0
        self.lock = threading.Lock()

    def is_fatal(self, res: ChatResult) -> bool:
        """A failure that stops the endpoint by itself (`record` raises for it)."""
        return res.error is not None and res.status in self.FATAL

    def record(self, res: ChatResult) -> None:
        with self.lock:
            if res.error is None:
                self.consecutive = 0
                return
            self.consecutive += 1
            fatal = res.status in self.FATAL
            if not fatal and self.consecutive < self.endpoint.max_consecutive_failures:
                return
        ep = self.endpoint
        where = (
            f"{self.role} endpoint {ep.name!r} "
            f"(model {ep.model!r} at {ep.public_dict()['base_url'] or 'api.openai.com'})"
        )
        status = f"HTTP {res.status}" if res.status else "no HTTP status"
        why = (
            f"{status}: {self.FATAL[res.status]}"
            if fatal
            else f"{self.consecutive} failed calls in a row, the last with {status}"
        )
        raise EndpointDown(
            f"{self.label}: circuit breaker stopped {where}: {why}. Last error: {res.error}. "
            f"Successful replies are cached; fix the endpoint and re-run.",
            res.status,
        )


class Progress:
    """Logs a line every `every` results: done/total, errors, rate."""

    def __init__(self, label: str, total: int, every: int | None = None):
        self.label, self.total = label, total
        self.every = every or max(1, min(100, total // 10 or 1))
        self.done = self.errors = 0
        self.started = time.monotonic()

    def update(self, result: ChatResult) -> None:
        self.done += 1
        self.errors += result.error is not None
        if self.done % self.every == 0 or self.done == self.total:
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            log.info("%s: %d/%d done, %d errors, %.2f/s", self.label, self.done, self.total, self.errors, rate)


def _quiet_http_logs() -> None:
    # The openai client logs every request at INFO through httpx: thousands of lines in a
    # task log. Raise them to WARNING unless someone configured those loggers already.
    for name in ("httpx", "httpx2", "httpcore"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
