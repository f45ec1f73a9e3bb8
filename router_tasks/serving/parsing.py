"""Reading a request: its body under a size cap, JSON that may be hostile, the chat
request's shape, and errors in OpenAI's shape.

Every refusal is an `ApiError`, raised where the problem is found and turned into
`{"error": {"message", "type", "param", "code"}}` with its status in one place (the app),
so a handler reads top to bottom.

Hostile input: the body is read chunk by chunk and refused with 413 as soon as it passes
the cap (a Content-Length over the cap is refused before reading anything); a body of any
shape that does not parse is a 400, nesting too deep for the parser included; bodies
large enough to hold the event loop for milliseconds are parsed (and re-encoded) in a
thread, so other clients are not kept waiting behind them.
"""

from __future__ import annotations

import asyncio
import json

from starlette.responses import JSONResponse

#: bodies at least this large are parsed and encoded off the event loop
OFFLOAD_BYTES = 256 * 1024


class ApiError(Exception):
    """A refusal in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
        logged: bool = False,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers
        self.logged = logged  # the request already has its traffic-log row and request metrics

    def response(self) -> JSONResponse:
        return openai_error(self.status, self.message, self.type, self.param, self.code, self.headers)


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def too_large(cap: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than this gateway's limit of {cap} bytes (tela serve --max-body-mb)",
        code="request_too_large",
    )


async def read_body(request, cap: int) -> bytes:
    """The body, refused with 413 once it passes `cap` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_large(cap)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large(cap)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _loads(raw: bytes):
    return json.loads(raw, parse_constant=_no_constants)


async def parse_json(raw: bytes):
    """The parsed body; ApiError 400 for anything that is not JSON, whatever its shape."""
    try:
        if len(raw) >= OFFLOAD_BYTES:
            return await asyncio.to_thread(_loads, raw)
        return _loads(raw)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to parse") from None
    except ValueError as err:  # JSONDecodeError, bad UTF-8, NaN/Infinity, oversized integers
        detail = f"{err.msg} at char {err.pos}" if isinstance(err, json.JSONDecodeError) else str(err)[:200]
        raise ApiError(400, f"the request body is not valid JSON ({detail})") from None


async def encode_json(obj, size_hint: int) -> bytes:
    """`obj` as compact JSON bytes (off the loop when the request was large)."""
    try:
        if size_hint >= OFFLOAD_BYTES:
            return await asyncio.to_thread(_dumps, obj)
        return _dumps(obj)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to forward") from None


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def check_chat_body(body) -> None:
    """ApiError 400 naming the first thing wrong with a chat request body."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise ApiError(400, "you must provide a model parameter (a non-empty string)", param="model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty array of message objects", param="messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ApiError(400, f"'{field}' must be a positive integer", param=field)


def last_user_text(messages: list) -> str | None:
    """The text of the last user message (text parts joined), None when there is none."""
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        c = m.get("content")
        if isinstance(c, str):
            return c
        if isinstance(c, list):
            return " ".join(
                p["text"]
                for p in c
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            )
    return None
