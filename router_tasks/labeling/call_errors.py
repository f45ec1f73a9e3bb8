"""What a failed LLM call says, safe to store: error texts with anything key-like redacted,
and a malformed 200 body turned into an error the `openai` client retries."""

from __future__ import annotations

import json
import re


def reject_malformed_json(response) -> None:
    """A 200 whose JSON body is cut off (a flaky proxy) would reach the openai client's
    parser as a bare JSONDecodeError, which it does not retry. Raised here as a transport
    error instead, the client retries it like a dropped connection, with its own backoff."""
    import httpx2  # the openai client's HTTP library

    if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
        return
    response.read()
    try:
        json.loads(response.content)
    except ValueError as err:
        why = f"{err.msg} at char {err.pos}" if isinstance(err, json.JSONDecodeError) else str(err)
        raise httpx2.DecodingError(
            f"malformed response: the body is not valid JSON ({why})", request=response.request
        ) from None


# What a credential looks like in an error text: provider keys ("sk-...", "sk-proj-..."),
# bearer tokens, key=value pairs naming a secret, and long opaque tokens.
_SECRET_PATTERNS = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"), "Bearer [REDACTED]"),
    (re.compile(r"\b(?:sk|pk|rk|ak)-[A-Za-z0-9_\-]{6,}"), "[REDACTED]"),
    (
        re.compile(
            r"(?i)\b((?:api[_-]?key|access[_-]?key|secret|token|password|passwd|authorization|key)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',&;}]+"
        ),
        r"\1[REDACTED]",
    ),
    (re.compile(r"\b[A-Za-z0-9_\-]{32,}\b"), "[REDACTED]"),
]


def redact_secrets(text: str | None) -> str | None:
    """`text` with anything that looks like a key or token replaced by [REDACTED]."""
    if text is None:
        return None
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def status_of(err: Exception) -> int | None:
    return getattr(err, "status_code", None)


def describe_error(err: Exception) -> str:
    """A short, key-free description of a failed call for the `error` column."""
    return redact_secrets(_describe_error_raw(err))


def _describe_error_raw(err: Exception) -> str:
    import openai

    if isinstance(err, openai.APIStatusError):
        msg = err.message if isinstance(err.message, str) else str(err)
        text = f"HTTP {err.status_code} {type(err).__name__}: {msg}"
    elif isinstance(err, openai.APITimeoutError):
        text = "timeout: no response within the request timeout"
    elif isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err
        # a malformed body (see reject_malformed_json) names itself
        text = (
            str(cause)
            if str(cause).startswith("malformed response")
            else f"connection error: {type(cause).__name__}: {cause}"
        )
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:500]
