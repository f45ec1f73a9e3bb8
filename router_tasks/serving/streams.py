"""Relaying a streamed answer so that it never lies.

- Before the first byte goes to the client, `StreamRelay.prime` reads the upstream's first
  event: an upstream that fails, closes, or sends an error event before it is a failure
  of that upstream, and the gateway falls back to the next model as for any failed call.
- After the first byte there is nothing to fall back to: an upstream error (a broken
  connection, a timeout between chunks, a stream that ends without `[DONE]`) ends the
  stream with an OpenAI-style error event, `data: {"error": {...}}`, which the `openai`
  client raises as an APIError, and no `[DONE]`.
- An upstream that answers a stream request with a plain chat completion (some servers
  ignore `stream`) is relayed as a proper stream: the message as one delta, the finish
  reason, the usage chunk when `stream_options.include_usage` asked for it, `[DONE]`.

Bytes are relayed as they arrive; only the first event is re-encoded (it carries the
`tela_routing` object) and only events that carry a usage object are parsed (for the
traffic log and the key's spend).
"""

from __future__ import annotations

import json
import re

import aiohttp

from router_tasks.serving.upstream import UpstreamError

DONE = b"data: [DONE]\n\n"
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def sse_event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_event(message: str, code: str = "upstream_stream_error") -> bytes:
    return sse_event({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


def completion_to_events(obj: dict, routing: dict, include_usage: bool) -> bytes:
    """A chat completion as the chunks a stream of it would have sent, then [DONE]."""
    base = {
        "id": obj.get("id"),
        "object": "chat.completion.chunk",
        "created": obj.get("created"),
        "model": obj.get("model"),
    }
    if obj.get("system_fingerprint"):
        base["system_fingerprint"] = obj["system_fingerprint"]
    chunks = []
    choices = obj.get("choices") or []
    for ch in choices:
        msg = ch.get("message") or {}
        delta = {"role": msg.get("role") or "assistant", "content": msg.get("content")}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
        if msg.get("refusal"):
            delta["refusal"] = msg["refusal"]
        chunks.append(
            {
                **base,
                "choices": [
                    {"index": ch.get("index", 0), "delta": delta, "finish_reason": None, "logprobs": ch.get("logprobs")}
                ],
            }
        )
    for ch in choices:
        chunks.append(
            {
                **base,
                "choices": [
                    {"index": ch.get("index", 0), "delta": {}, "finish_reason": ch.get("finish_reason") or "stop"}
                ],
            }
        )
    if not chunks:
        chunks.append({**base, "choices": []})
    if include_usage and obj.get("usage"):
        chunks.append({**base, "choices": [], "usage": obj["usage"]})
    chunks[0]["tela_routing"] = routing
    return b"".join(sse_event(c) for c in chunks) + DONE


class StreamRelay:
    """One upstream stream: `prime()` before answering, then iterate for the bytes to send.

    After iteration, `usage`, `completion_id`, `chunks` and `error` (None when the stream
    finished with [DONE]) describe what was relayed.
    """

    def __init__(self, resp: aiohttp.ClientResponse, name: str, include_usage: bool):
        self.resp, self.name, self.include_usage = resp, name, include_usage
        self.usage: dict | None = None
        self.completion_id: str | None = None
        self.chunks = 0
        self.error: str | None = None
        self.done = False
        self._head = b""
        self._buf = b""

    async def _read(self) -> bytes:
        """The next bytes from the upstream (b"" at its end); UpstreamError when it fails."""
        try:
            return await self.resp.content.readany()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(self.name, "timeout between stream chunks") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(self.name, f"stream broke ({type(e).__name__})") from None

    def _events(self, final: bool = False) -> list[bytes]:
        if b"\r" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        events = self._buf.split(b"\n\n")
        self._buf = b"" if final else events.pop()
        return [e for e in events if e.strip()]

    def _note(self, event: bytes) -> bytes:
        """Record what an event says (usage, [DONE], an error); returns it framed for the client."""
        if event.startswith(b"data:"):
            data = event[5:].strip()
            if data == b"[DONE]":
                self.done = True
            else:
                self.chunks += 1
                if _USAGE.search(data) or b'"error"' in data:
                    try:
                        obj = json.loads(data)
                    except (ValueError, RecursionError):
                        obj = None
                    if isinstance(obj, dict):
                        if isinstance(obj.get("usage"), dict):
                            self.usage = obj["usage"]
                        if isinstance(obj.get("error"), dict):
                            self.error = f"upstream error event: {str(obj['error'].get('message'))[:200]}"
        return event + b"\n\n"

    async def prime(self, routing: dict) -> None:
        """Read up to the upstream's first event and splice `routing` into it; UpstreamError
        (nothing sent yet: the caller may fall back) if the upstream fails before it."""
        ctype = self.resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            await self._prime_from_completion(routing)
            return
        events: list[bytes] = []
        while not events:
            chunk = await self._read()
            if not chunk:
                self._buf += b"\n\n"
                events = self._events(final=True)
                if not events:
                    raise UpstreamError(self.name, "stream ended before its first event")
                break
            self._buf += chunk
            events = self._events()
        first, rest = events[0], events[1:]
        if first.startswith(b"data:") and first[5:].strip() != b"[DONE]":
            try:
                obj = json.loads(first[5:].strip())
            except (ValueError, RecursionError):
                raise UpstreamError(self.name, "first stream event is not JSON", 200) from None
            if not isinstance(obj, dict) or isinstance(obj.get("error"), dict):
                raise UpstreamError(self.name, "stream began with an error event", 200, True, first[5:].strip())
            self.completion_id = obj.get("id") if isinstance(obj.get("id"), str) else None
            if isinstance(obj.get("usage"), dict):
                self.usage = obj["usage"]
            obj["tela_routing"] = routing
            self.chunks += 1
            head = sse_event(obj)
        else:
            head = self._note(first)
        self._head = head + b"".join(self._note(e) for e in rest)

    async def _prime_from_completion(self, routing: dict) -> None:
        try:
            raw = await self.resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(self.name, f"reading the reply failed ({type(e).__name__})") from None
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise UpstreamError(self.name, "answered a stream request with neither a stream nor JSON", 200) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            raise UpstreamError(self.name, "answered a stream request with no chat completion", 200, True, raw)
        self.usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
        self.completion_id = obj.get("id") if isinstance(obj.get("id"), str) else None
        self._head = completion_to_events(obj, routing, self.include_usage)
        self.chunks = len(obj["choices"])
        self.done = True

    async def relay(self):
        """The bytes to send: the primed head, then the upstream's events as they come."""
        try:
            yield self._head
            if self.done:
                return
            while True:
                try:
                    chunk = await self._read()
                except UpstreamError as err:
                    self.error = err.text
                    yield error_event(f"upstream {self.name}: {err.text} after the stream began")
                    return
                if not chunk:
                    break
                self._buf += chunk
                out = b"".join(self._note(e) for e in self._events())
                if out:
                    yield out
            tail = b"".join(self._note(e) for e in self._events(final=True))
            if tail:
                yield tail
            if not self.done and self.error is None:
                self.error = "stream ended before [DONE]"
                yield error_event(f"upstream {self.name}: the stream ended before it finished")
        finally:
            self.resp.release()
