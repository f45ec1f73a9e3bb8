"""Who may call the gateway, and how much: client keys checked on every `/v1/*` request,
requests per minute and dollars per UTC day counted per key name.

Requests per minute: the generic cell rate algorithm (GCRA, a leaky bucket as one
timestamp per key): a key with `rpm` N may send N requests at once and then one every
60/N s, so no 60 s window ever holds more than N, with no edge where two windows' quotas
meet. A refused request costs nothing, and `Retry-After` is when the next one fits.

Spend: the answered requests' cost from the endpoint prices, charged when the answer is
complete; a key is refused once its UTC day's spend has reached its `usd_per_day` (the
requests in flight at that moment still finish, so the limit can be passed by what they
cost). `Retry-After` is the seconds to the next UTC midnight.

Counters live in this process (`MemoryCounters`) or in Redis (`RedisCounters`,
`tela serve --redis-url`), which every replica and `--workers` process shares, so they
enforce one limit. One round trip admits a request (a Lua script checks spend and rpm
atomically, on Redis's own clock) and one charges it. Redis holds, per active key name,
`tela:rpm:<name>` (expires when its bucket is empty) and `tela:usd:<name>:<day>` (two
days). If Redis cannot be reached, a limited key is refused with 503 (a limit that cannot
be checked is not enforced silently); keys without limits never touch Redis.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from router_tasks.serving.keys import ClientKey, active_keys, key_hash
from router_tasks.serving.parsing import ApiError

log = logging.getLogger(__name__)

#: the client of a gateway without keys (`--no-auth`)
ANONYMOUS = ClientKey("none")
WINDOW_S = 60.0


@dataclass(frozen=True)
class Admission:
    verdict: str  # "ok" | "rpm" | "spend"
    retry_after_s: float = 0.0
    spent_usd: float = 0.0


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def _to_midnight(now: float) -> int:
    return max(1, math.ceil(86400 - now % 86400))


def _gcra(tat: float, now: float, rpm: int) -> tuple[bool, float, float]:
    """(allowed, retry after s, the bucket's new theoretical arrival time)."""
    interval = WINDOW_S / rpm
    new_tat = max(tat, now) + interval
    if new_tat - now > WINDOW_S:
        return False, new_tat - now - WINDOW_S, tat
    return True, 0.0, new_tat


class MemoryCounters:
    """Counters of this process: one bucket and one day's spend per key name, so bounded by the keys."""

    shared = False

    def __init__(self):
        self._tat: dict[str, float] = {}
        self._usd: dict[str, tuple[str, float]] = {}

    async def admit(self, client: ClientKey) -> Admission:
        now = time.time()
        d, spent = self._usd.get(client.name, ("", 0.0))
        spent = spent if d == _day(now) else 0.0
        if client.usd_per_day is not None and spent >= client.usd_per_day:
            return Admission("spend", _to_midnight(now), spent)
        if client.rpm is not None:
            ok, wait, tat = _gcra(self._tat.get(client.name, 0.0), now, client.rpm)
            if not ok:
                return Admission("rpm", wait, spent)
            self._tat[client.name] = tat
        return Admission("ok", 0.0, spent)

    async def charge(self, name: str, usd: float) -> None:
        day = _day(time.time())
        d, spent = self._usd.get(name, (day, 0.0))
        self._usd[name] = (day, (spent if d == day else 0.0) + usd)

    async def close(self) -> None:
        pass


# KEYS: rpm bucket, today's spend. ARGV: rpm (0: none), usd per day (0: none).
# Returns {verdict (0 ok, 1 rpm, 2 spend), retry after s, spent} as strings.
_ADMIT = """
local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
local usd_limit = tonumber(ARGV[2])
if usd_limit > 0 and spent >= usd_limit then return {2, '0', tostring(spent)} end
local rpm = tonumber(ARGV[1])
if rpm > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local interval = 60.0 / rpm
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - now > 60.0 then return {1, tostring(new_tat - now - 60.0), tostring(spent)} end
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return {0, '0', tostring(spent)}
"""
_VERDICTS = {0: "ok", 1: "rpm", 2: "spend"}


class RedisCounters:
    """The same counters in Redis: one round trip to admit a request, one to charge it."""

    shared = True

    def __init__(self, url: str):
        import redis.asyncio as aioredis

        self.url = url
        self.redis = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._admit = self.redis.register_script(_ADMIT)

    async def admit(self, client: ClientKey) -> Admission:
        day = _day(time.time())
        verdict, wait, spent = await self._admit(
            keys=[f"tela:rpm:{client.name}", f"tela:usd:{client.name}:{day}"],
            args=[client.rpm or 0, client.usd_per_day or 0],
        )
        verdict = _VERDICTS[int(verdict)]
        wait = _to_midnight(time.time()) if verdict == "spend" else float(wait)
        return Admission(verdict, wait, float(spent))

    async def charge(self, name: str, usd: float) -> None:
        key = f"tela:usd:{name}:{_day(time.time())}"
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
                raise ValueError(
                    f"--keys {keys_file}: no such file; create keys with `tela keys create --file "
                    f"{keys_file} --name NAME`"
                )
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
            raise ApiError(
                401,
                "You didn't provide an API key: send 'Authorization: Bearer <key>' with a key from `tela keys create`.",
                code="missing_api_key",
            )
        client = self._keys.get(key_hash(token))
        if client is None:
            raise ApiError(401, "Incorrect API key provided (unknown or revoked).", code="invalid_api_key")
        if client.limited:
            await self._check_limits(client)
        return client

    async def _check_limits(self, client: ClientKey) -> None:
        try:
            admission = await self.counters.admit(client)
        except Exception as err:  # redis down: a limit that cannot be checked is not enforced silently
            log.warning("limit counters unavailable: %s", type(err).__name__)
            raise ApiError(
                503,
                f"the limit counters are unavailable ({type(err).__name__}); retry shortly",
                "server_error",
                code="limits_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        wait = str(max(1, math.ceil(admission.retry_after_s)))
        if admission.verdict == "rpm":
            raise ApiError(
                429,
                f"key {client.name!r} is over its limit of {client.rpm} requests per minute; retry after {wait} s",
                "requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": wait},
            )
        if admission.verdict == "spend":
            raise ApiError(
                429,
                f"key {client.name!r} has spent ${admission.spent_usd:.6g} today, its limit is "
                f"${client.usd_per_day:g} per UTC day; retry after {wait} s (midnight UTC)",
                "insufficient_quota",
                code="spend_limit_exceeded",
                headers={"Retry-After": wait},
            )

    async def charge(self, client: ClientKey, usd: float) -> None:
        """Add an answered request's cost to its key's day (only keys with a spend limit are counted)."""
        if client.usd_per_day is None or usd <= 0:
            return
        try:
            await self.counters.charge(client.name, usd)
        except Exception as err:
            log.warning("could not charge $%.6f to key %s: %s", usd, client.name, type(err).__name__)

    async def close(self) -> None:
        await self.counters.close()
