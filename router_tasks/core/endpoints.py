"""Where a model is called: the `Endpoint` config shared by labeling (generate, judge), the
lifecycle's loop settings and the serving gateway.

An `Endpoint` is plain config (a dict in DAG params / CLI files): which model to call
where, with what decoding settings. API keys never enter it: `api_key_env` names the
environment variable that holds the key, read only when a client is built, never logged
or stored. The special base_url "local" means the bundled SmolLM2 server
(`router_tasks.labeling.llm_server`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from urllib.parse import urlsplit, urlunsplit

LOCAL = "local"
LOCAL_API_KEY = "local-no-key"  # the local server checks no key; the client needs one
NO_KEY = "no-key"  # for OpenAI-compatible servers that take none

# Settings that change what a model answers: the part of an endpoint that belongs in an
# artifact's config (and so its cache key). Timeouts, retries, concurrency and the key's
# variable name do not change answers and stay out, so tuning them reuses artifacts.
OUTPUT_FIELDS = ("name", "model", "base_url", "max_tokens", "temperature", "system_prompt")
#: how a judge's verdict may be read (see `router_tasks.labeling.verdicts`)
VERDICT_PATHS = ("auto", "text", "logprobs", "continue")


class MissingEndpointKey(RuntimeError):
    """An endpoint's API key is not in the environment. A configuration error: the same
    call fails the same way until someone sets the key, so callers must not retry it
    (plugins/tela_retries.py fails the Airflow task at once)."""

    def __init__(self, endpoint: str, variable: str, conn_id: str | None = None):
        self.endpoint, self.variable, self.conn_id = endpoint, variable, conn_id
        where = (
            f"in Airflow it is the password of connection {conn_id!r} (conn_id), copied into {variable} "
            "before the task runs: create that connection or give it a password"
            if conn_id
            else "set it in the environment of the process that calls the endpoint, or, in Airflow, name a "
            "connection holding the key in the endpoint's conn_id"
        )
        super().__init__(
            f"endpoint {endpoint!r}: no API key: environment variable {variable} (api_key_env) "
            f"is not set or empty; {where}"
        )


@dataclass(frozen=True)
class Endpoint:
    name: str  # the label in answer/judgement tables, e.g. "gpt-4-1106-preview"
    model: str  # the model id the API expects (a deployment name, "smollm2", ...)
    base_url: str | None = None  # None: api.openai.com; "local": the bundled server
    api_key_env: str | None = None  # env var holding the key; None: OPENAI_API_KEY for OpenAI
    # In Airflow: a connection whose password plugins/tela_connections.py puts into
    # `api_key_env` before the task runs. The library only reads the variable.
    conn_id: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    system_prompt: str | None = None
    timeout_s: float | None = None  # per request; default 120 s (900 s for the local CPU server)
    max_retries: int = 3
    concurrency: int | None = None  # requests in flight; default 4 (8 for local: one full batch)
    # Dollars per 1M tokens, for the cost ledger. They do not change answers, so they stay
    # out of artifact keys: a price update re-prices, it does not re-ask.
    price_input_per_m: float = 0.0
    price_output_per_m: float = 0.0
    # The circuit breaker: this many failed calls in a row stop the endpoint's part.
    max_consecutive_failures: int = 8
    # As a judge, how its 1-5 verdict is read (`router_tasks.labeling.verdicts`): "auto"
    # ("continue" for base_url "local", else "logprobs"), "text", "logprobs" or "continue".
    verdict: str = "auto"

    @classmethod
    def from_dict(cls, data: Mapping, *, defaults: Mapping | None = None, where: str = "endpoint") -> Endpoint:
        """Build from config; `defaults` fill fields the dict leaves out.

        Raises ValueError naming the offending field: unknown keys are rejected (a typo
        would otherwise silently fall back to a default) and so is any literal API key.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        if "api_key" in data:
            raise ValueError(
                f"{where}: do not put an API key in config; set it in an environment variable "
                f"and name that variable in 'api_key_env'"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(known)}")
        merged = {k: v for k, v in (defaults or {}).items() if k in known and v is not None}
        merged.update({k: v for k, v in data.items() if v is not None})
        if "name" not in merged and "model" in merged:
            merged["name"] = merged["model"]
        for req in ("name", "model"):
            if not isinstance(merged.get(req), str) or not merged[req].strip():
                raise ValueError(f"{where}: field {req!r} is required and must be a non-empty string")
        where = f"{where} {merged['name']!r}"
        if not isinstance(merged.get("max_tokens", 1), int) or merged.get("max_tokens", 1) < 1:
            raise ValueError(f"{where}: max_tokens must be a positive integer, got {merged.get('max_tokens')!r}")
        if not isinstance(merged.get("temperature", 0.0), (int, float)) or merged.get("temperature", 0.0) < 0:
            raise ValueError(f"{where}: temperature must be a number >= 0, got {merged.get('temperature')!r}")
        mcf = merged.get("max_consecutive_failures", 8)
        if isinstance(mcf, bool) or not isinstance(mcf, int) or mcf < 1:
            raise ValueError(f"{where}: max_consecutive_failures must be a positive integer, got {mcf!r}")
        if merged.get("concurrency") is not None and int(merged["concurrency"]) < 1:
            raise ValueError(f"{where}: concurrency must be >= 1")
        for price in ("price_input_per_m", "price_output_per_m"):
            value = merged.get(price, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}: {price} must be a number >= 0 (dollars per 1M tokens), got {value!r}")
            merged[price] = float(value)
        if merged.get("verdict", "auto") not in VERDICT_PATHS:
            raise ValueError(f"{where}: verdict must be one of {list(VERDICT_PATHS)}, got {merged.get('verdict')!r}")
        base = merged.get("base_url")
        if base is not None and base != LOCAL and urlsplit(base).scheme not in ("http", "https"):
            raise ValueError(f"{where}: base_url must be an http(s) URL or 'local', got {base!r}")
        merged["temperature"] = float(merged.get("temperature", 0.0))
        return cls(**merged)

    @property
    def is_local(self) -> bool:
        return self.base_url == LOCAL

    def output_config(self) -> dict:
        """JSON-able settings that determine the answers; safe to store (no secrets)."""
        cfg = {k: getattr(self, k) for k in OUTPUT_FIELDS}
        cfg["base_url"] = redact_url(self.base_url)
        return cfg

    def public_dict(self) -> dict:
        """Every field, with credentials stripped from the URL: for logs and manifests."""
        d = asdict(self)
        d["base_url"] = redact_url(self.base_url)
        return d

    def api_key(self) -> str:
        """The key for this endpoint, from the environment; never logged."""
        if self.is_local:
            return LOCAL_API_KEY
        var = self.api_key_env or ("OPENAI_API_KEY" if self.base_url is None else None)
        if var is None:
            return NO_KEY
        key = os.environ.get(var)
        if not key:
            raise MissingEndpointKey(self.name, var, self.conn_id)
        return key

    def with_system_prompt(self, messages: list[dict]) -> list[dict]:
        """The messages as sent: the endpoint's system prompt first, unless they have one."""
        if self.system_prompt and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def dollars(self, input_tokens: int, output_tokens: int, factor: float = 1.0) -> float:
        return factor * (input_tokens * self.price_input_per_m + output_tokens * self.price_output_per_m) / 1e6

    def workers(self) -> int:
        if self.concurrency is not None:
            return int(self.concurrency)
        return 8 if self.is_local else 4

    def request_timeout(self) -> float:
        if self.timeout_s is not None:
            return float(self.timeout_s)
        # CPU generation queues behind other batches: minutes, not seconds.
        return 900.0 if self.is_local else 120.0


def redact_url(url: str | None) -> str | None:
    """Drop user:password@ and the query string (where some gateways put keys)."""
    if url is None or url == LOCAL:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def parse_endpoints(models: list[dict], *, defaults: dict | None = None, where: str = "models") -> list[Endpoint]:
    if not isinstance(models, (list, tuple)) or not models:
        raise ValueError(f"{where}: expected a non-empty list of endpoint dicts")
    endpoints = [Endpoint.from_dict(m, defaults=defaults, where=f"{where}[{i}]") for i, m in enumerate(models)]
    names = [e.name for e in endpoints]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: model names must be unique; repeated: {dupes}")
    return endpoints
