"""Who may call the gateway, and how much: client keys checked on every `/v1/*` request,
requests per minute and dollars per UTC day counted per key name.

Counting: rpm over fixed calendar minutes (a refused request counts too, so hammering does
not help; `Retry-After` is the seconds left in the minute); spend is the answered
requests' cost from the endpoint prices, charged when the answer is complete, so a key
is refused once its day's spend has reached the limit (the requests in flight at that
moment still finish: the limit can be passed by what they cost). `Retry-After` for spend
is the seconds to the next UTC midnight.

Counters live in this process (`MemoryCounters`) or in Redis (`RedisCounters`,
`tela serve --redis-url`), which every replica and `--workers` process shares, so they
enforce one limit. Keys are `tela:rpm:<name>:<minute>` (expire after two minutes) and
`tela:usd:<name>:<day>` (two days): Redis holds a few small keys per active name. If Redis
cannot be reached, a limited key is refused with 503 (a limit that cannot be checked is
not enforced silently); keys without limits never touch Redis.
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime, timezone

from router_tasks.serving.keys import ClientKey, active_keys, key_hash
from router_tasks.serving.parsing import ApiError

log = logging.getLogger(__name__)

#: the client of a gateway without keys (`--no-auth`)
ANONYMOUS = ClientKey("none")


def _minute(now: float) -> int:
    return int(now // 60)


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")


def _to_midnight(now: float) -> int:
    return max(1, math.ceil(86400 - now % 86400))


class MemoryCounters:
    """Counters of this process: one (window, count) per key name, so bounded by the keys."""

    shared = False

    def __init__(self):
        self._rpm: dict[str, tuple[int, int]] = {}
        self._usd: dict[str, tuple[str, float]] = {}

    async def admit(self, name: str, minute: int, day: str) -> tuple[int, float]:
        """Count one request in `minute`; (requests this minute, dollars spent on `day`)."""
        m, n = self._rpm.get(name, (minute, 0))
        n = n + 1 if m == minute else 1
        self._rpm[name] = (minute, n)
        d, usd = self._usd.get(name, (day, 0.0))
        return n, usd if d == day else 0.0

    async def charge(self, name: str, day: str, usd: float) -> None:
        d, spent = self._usd.get(name, (day, 0.0))
        self._usd[name] = (day, (spent if d == day else 0.0) + usd)

    async def close(self) -> None:
        pass


class RedisCounters:
    """The same counters in Redis: one round trip to admit a request, one to charge it."""

    shared = True

    def __init__(self, url: str):
        import redis.asyncio as aioredis

        self.url = url
        self.redis = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def admit(self, name: str, minute: int, day: str) -> tuple[int, float]:
        rpm_key = f"tela:rpm:{name}:{minute}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(rpm_key)
            pipe.expire(rpm_key, 120)
            pipe.get(f"tela:usd:{name}:{day}")
            count, _, spent = await pipe.execute()
        return int(count), float(spent or 0.0)

    async def charge(self, name: str, day: str, usd: float) -> None:
        key = f"tela:usd:{name}:{day}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrbyfloat(key, usd)
            pipe.expire(key, 2 * 86400)
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class ClientAuth:
    """Checks a request's key and its limits; `keys_file=None` lets every request in (as ANONYMOUS)."""

    def __init__(self, keys_file: str | None, counters=None):
        self.keys_file = keys_file
        self.counters = counters or MemoryCounters()
        self._keys: dict[str, ClientKey] = {}
        self._stamp = None
        if keys_file is not None:
            if not os.path.exists(keys_file):
                raise ValueError(f"--keys {keys_file}: no such file; create keys with `tela keys create --file "
                                 f"{keys_file} --name NAME`")
            self.reload()
            if not self._keys:
                log.warning("keys file %s holds no active key: every /v1 request will get 401", keys_file)

    @property
    def enabled(self) -> bool:
        return self.keys_file is not None

    def reload(self) -> bool:
        """Re-read the KEYS file if it changed; a file that became unreadable keeps the old keys."""
        if self.keys_file is None:
            return False
        try:
            st = os.stat(self.keys_file)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return False
            keys = active_keys(self.keys_file)
        except (OSError, ValueError) as err:
            if self._stamp is None:
                raise ValueError(str(err)) from None
            log.warning("keeping the keys already loaded: %s", err)
            return False
        self._keys, self._stamp = keys, stamp
        log.info("loaded %d active client keys from %s", len(keys), self.keys_file)
        return True

    async def admit(self, authorization: str | None) -> ClientKey:
        """The caller's key; ApiError 401 (no or unknown key) or 429 (over a limit)."""
        if self.keys_file is None:
            return ANONYMOUS
        token = _bearer(authorization)
        if token is None:
            raise ApiError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>' with a key from "
                                "`tela keys create`.", code="missing_api_key")
        client = self._keys.get(key_hash(token))
        if client is None:
            raise ApiError(401, "Incorrect API key provided (unknown or revoked).", code="invalid_api_key")
        if client.limited:
            await self._check_limits(client)
        return client

    async def _check_limits(self, client: ClientKey) -> None:
        now = time.time()
        try:
            count, spent = await self.counters.admit(client.name, _minute(now), _day(now))
        except Exception as err:  # redis down: a limit that cannot be checked is not enforced silently
            log.warning("limit counters unavailable: %s", type(err).__name__)
            raise ApiError(503, f"the limit counters are unavailable ({type(err).__name__}); retry shortly",
                           "server_error", code="limits_unavailable", headers={"Retry-After": "1"}) from None
        if client.rpm is not None and count > client.rpm:
            wait = max(1, math.ceil(60 - now % 60))
            raise ApiError(429, f"key {client.name!r} is over its limit of {client.rpm} requests per minute; "
                                f"retry after {wait} s", "requests", code="rate_limit_exceeded",
                           headers={"Retry-After": str(wait)})
        if client.usd_per_day is not None and spent >= client.usd_per_day:
            wait = _to_midnight(now)
            raise ApiError(429, f"key {client.name!r} has spent ${spent:.4f} today, its limit is "
                                f"${client.usd_per_day:g} per UTC day; retry after {wait} s (midnight UTC)",
                           "insufficient_quota", code="spend_limit_exceeded", headers={"Retry-After": str(wait)})

    async def charge(self, client: ClientKey, usd: float) -> None:
        """Add an answered request's cost to its key's day (only keys with a spend limit are counted)."""
        if client.usd_per_day is None or usd <= 0:
            return
        try:
            await self.counters.charge(client.name, _day(time.time()), usd)
        except Exception as err:
            log.warning("could not charge $%.6f to key %s: %s", usd, client.name, type(err).__name__)

    async def close(self) -> None:
        await self.counters.close()
