"""The upstream endpoints: one pooled HTTP session for all of them, retries that honour
Retry-After, and the cooldown that takes a failing endpoint out of fallback chains.

Why aiohttp and not the `openai` client the labeling stages use: a gateway relays bytes,
it does not need typed responses, and the openai client's request building over httpx
costs several times aiohttp's CPU per call, which on a small machine is most of a proxy's
overhead. One `ClientSession` (keep-alive connection pool) serves every request: nothing
is allocated per request but the request itself.

Each endpoint keeps its timeout (connect, and between bytes read, as the openai client's)
and `max_retries`: a 408/409/429/5xx, a timeout or a connection error is retried after the
upstream's `retry-after-ms` / `Retry-After` (up to 60 s) or an exponential backoff with
jitter (0.5 s doubling to 8 s), unless it says `x-should-retry: false`. A call that still
fails raises `UpstreamError`; `retryable` says whether another upstream may succeed (a
4xx other than 408/409/429 is the caller's fault and comes back as is). `cooldown_fails`
failures in a row put an upstream in cooldown for `cooldown_s`, during which chains skip
it (LiteLLM's allowed_fails / cooldown_time).

Secrets: upstream keys live only in the session's request headers (read from
`api_key_env`); errors carry a status or an exception's type name, never a URL or a header.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass

import aiohttp

from router_tasks.core.endpoints import Endpoint
from router_tasks.labeling.llm_server import REUSE_ENV
from router_tasks.serving.metrics import Metrics

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
OPENAI_URL = "https://api.openai.com/v1"
MAX_RETRY_AFTER_S = 60.0


class UpstreamError(Exception):
    def __init__(
        self, model: str, text: str, status: int | None = None, retryable: bool = True, body: bytes | None = None
    ):
        super().__init__(f"{model}: {text}")
        self.model, self.text, self.status, self.retryable, self.body = model, text, status, retryable, body

    def error_json(self) -> dict | None:
        """The upstream's own OpenAI-style error body, if it sent one."""
        try:
            obj = json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):
            return None
        return obj if isinstance(obj, dict) and isinstance(obj.get("error"), dict) else None


def _base_url(ep: Endpoint) -> str:
    if ep.is_local:
        url = os.environ.get(REUSE_ENV)
        if not url:
            raise ValueError(
                f"endpoint {ep.name!r} has base_url 'local': the gateway does not start a model "
                f"server; start one and set {REUSE_ENV} to its URL"
            )
        return url.rstrip("/")
    return (ep.base_url or OPENAI_URL).rstrip("/")


@dataclass
class Upstream:
    endpoint: Endpoint
    url: str
    headers: dict
    timeout: aiohttp.ClientTimeout
    fails_in_row: int = 0
    cooldown_until: float = 0.0
    cooldowns: int = 0

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until


def _retry_after(headers) -> float | None:
    """Seconds the upstream asked to wait (retry-after-ms, then Retry-After as seconds or a date)."""
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            seconds = float(value) / 1000
            return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None


def _backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


class Upstreams:
    def __init__(self, endpoints: list[Endpoint], metrics: Metrics, cooldown_fails: int = 3, cooldown_s: float = 30.0):
        self.metrics, self.cooldown_fails, self.cooldown_s = metrics, cooldown_fails, cooldown_s
        self.by_name: dict[str, Upstream] = {}
        for ep in endpoints:
            t = ep.request_timeout()
            headers = {"Authorization": f"Bearer {ep.api_key()}", "Content-Type": "application/json"}
            self.by_name[ep.name] = Upstream(
                ep,
                f"{_base_url(ep)}/chat/completions",
                headers,
                aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
            )
        self.by_model_id = {ep.model: ep.name for ep in endpoints}
        #: (input, output) dollars per 1M tokens by upstream name, for the budget policies
        self.prices = {
            n: (u.endpoint.price_input_per_m, u.endpoint.price_output_per_m) for n, u in self.by_name.items()
        }
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def names(self) -> list[str]:
        return list(self.by_name)

    def resolve(self, name: str) -> str | None:
        """The upstream a model name means (its endpoint name or model id), None if neither."""
        return name if name in self.by_name else self.by_model_id.get(name)

    def available(self, chain: list[str]) -> list[str]:
        """The chain without upstreams in cooldown (all of it, if every one is cooling)."""
        now = time.monotonic()
        ok = [m for m in chain if not self.by_name[m].cooling(now)]
        return ok or list(chain)

    def failed(self, up: Upstream, err: UpstreamError) -> None:
        name = up.endpoint.name
        self.metrics.inc(
            "tela_upstream_errors_total",
            "Upstream calls that failed after retries.",
            model=name,
            error=str(err.status or err.text.split(" ")[0]),
        )
        up.fails_in_row += 1
        if up.fails_in_row >= self.cooldown_fails:
            up.cooldown_until = time.monotonic() + self.cooldown_s
            up.cooldowns += 1
            up.fails_in_row = 0
            log.warning(
                "upstream %s failed %d times in a row: cooling down for %.0f s (last: %s)",
                name,
                self.cooldown_fails,
                self.cooldown_s,
                err.text,
            )

    @staticmethod
    def succeeded(up: Upstream) -> None:
        up.fails_in_row = 0

    async def open(self, up: Upstream, payload: bytes) -> aiohttp.ClientResponse:
        """POST `payload`; the response once its status is 200 (headers read, body not),
        after the endpoint's retries. The caller releases it."""
        name = up.endpoint.name
        retries = up.endpoint.max_retries
        for attempt in range(retries + 1):
            try:
                resp = await self.session.post(up.url, data=payload, headers=up.headers, timeout=up.timeout)
            except (TimeoutError, aiohttp.ServerTimeoutError):
                err, wait = UpstreamError(name, "timeout"), None
            except aiohttp.ClientError as e:
                err, wait = UpstreamError(name, f"connection error ({type(e).__name__})"), None
            else:
                if resp.status == 200:
                    return resp
                try:
                    body = await resp.read()
                except (TimeoutError, aiohttp.ClientError):
                    body = None
                finally:
                    resp.release()
                status = resp.status
                retryable = status >= 500 or status in RETRYABLE_STATUS
                err = UpstreamError(name, f"HTTP {status}", status, retryable, body)
                should = resp.headers.get("x-should-retry")
                if not retryable and should != "true" or should == "false":
                    raise err
                wait = _retry_after(resp.headers)
            if attempt == retries:
                raise err
            log.debug("upstream %s: %s, retry %d of %d", name, err.text, attempt + 1, retries)
            await asyncio.sleep(_backoff(attempt) if wait is None else wait)
        raise AssertionError("unreachable")

    async def complete(self, up: Upstream, payload: bytes) -> tuple[bytes, dict]:
        """A non-streaming call: (the reply's bytes, the reply parsed). A reply that is not a
        chat completion counts as a failure of this upstream."""
        name = up.endpoint.name
        resp = await self.open(up, payload)
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(name, "timeout while reading the reply") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(name, f"connection error while reading the reply ({type(e).__name__})") from None
        finally:
            resp.release()
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise UpstreamError(name, "reply is not JSON", 200) from None
        if not isinstance(obj, dict) or "choices" not in obj:
            what = "an error" if isinstance(obj, dict) and "error" in obj else "not a chat completion"
            raise UpstreamError(name, f"HTTP 200 with {what}", 200, True, raw)
        return raw, obj
