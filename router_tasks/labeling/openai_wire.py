"""The OpenAI chat-completions wire format as the bundled server speaks it: request checks
and response bodies, with no model in sight (`llm_server` runs the model).

Besides OpenAI's own fields (`messages`, `max_tokens` / `max_completion_tokens`, `stop`,
`n`, `stream`, `logprobs`, `top_logprobs`), two extensions that vLLM's OpenAI-compatible
server also takes, under the same names, so a client written for one works with the other:

- `continue_final_message: true` with `add_generation_prompt: false`: the last message is
  an assistant turn to be continued, not closed (assistant prefill); the reply's content
  is only the continuation.
- a choice constraint, `guided_choice: [...]` or `structured_outputs: {"choice": [...]}`:
  the reply is exactly one of the choices. This server takes single-token choices only
  (the 1-5 verdict digits of a judge); its `top_logprobs` then list the choices with
  log-probabilities renormalised over them (vLLM's processed-logprobs mode).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

#: OpenAI's limit on `top_logprobs`
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "user", "assistant", "developer")


class BadRequest(ValueError):
    """A client error: becomes an HTTP 4xx with an OpenAI-shaped error body."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass
class ChatRequest:
    """A checked chat request: what the model needs to answer it."""

    messages: list[dict]
    max_tokens: int
    stop: list[str]
    top_logprobs: int | None  # None: no logprobs asked; 0-20: alternatives per token
    continue_final: bool  # continue the final (assistant) message instead of starting a turn
    choices: list[str] | None  # the reply must be one of these


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI "content parts": keep the text ones
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(parts)
    raise BadRequest(
        f"messages[{index}].content must be a string or a list of text parts", param=f"messages[{index}].content"
    )


def _choices(body: dict) -> list[str] | None:
    structured = body.get("structured_outputs")
    choices = body.get("guided_choice")
    where = "guided_choice"
    if structured is not None:
        if not isinstance(structured, dict):
            raise BadRequest("structured_outputs must be an object", param="structured_outputs")
        unsupported = sorted(set(structured) - {"choice"})
        if unsupported:
            raise BadRequest(
                f"structured_outputs: only 'choice' is supported here, got {unsupported}", param="structured_outputs"
            )
        choices, where = structured.get("choice"), "structured_outputs.choice"
    if choices is None:
        return None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise BadRequest(f"{where} must be a non-empty list of non-empty strings", param=where)
    return list(dict.fromkeys(choices))


def _logprobs(body: dict) -> int | None:
    want, top = body.get("logprobs"), body.get("top_logprobs")
    if want not in (None, True, False):
        raise BadRequest("logprobs must be a boolean", param="logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", param="top_logprobs")
        if not want:
            raise BadRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    return (top or 0) if want else None


def parse_chat_request(body: Any, *, served: str, aliases: set[str]) -> ChatRequest:
    """Check an OpenAI chat request; raise BadRequest naming the field at fault."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    name = body.get("model")
    if name not in aliases | {served}:
        raise BadRequest(
            f"model {name!r} is not served here; available: {served!r}",
            status=404,
            code="model_not_found",
            param="model",
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be system, user or assistant", param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _message_text(m.get("content"), i)})
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by this server", param="stream")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer", param="max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    continue_final = bool(body.get("continue_final_message", False))
    if continue_final:
        if body.get("add_generation_prompt", True):
            # vLLM's rule too: a continued turn cannot also open a new one
            raise BadRequest(
                "continue_final_message needs add_generation_prompt set to false", param="add_generation_prompt"
            )
        if messages[-1]["role"] != "assistant":
            raise BadRequest(
                "continue_final_message needs the last message to be an assistant message", param="messages"
            )
    return ChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        stop=stop,
        top_logprobs=_logprobs(body),
        continue_final=continue_final,
        choices=_choices(body),
    )


def token_entry(text: str, data: bytes, logprob: float) -> dict:
    return {"token": text, "logprob": float(logprob), "bytes": list(data)}


def logprobs_body(tokens: list[tuple[dict, list[dict]]] | None) -> dict | None:
    """`choices[0].logprobs` from (chosen token entry, its top alternatives) per token."""
    if tokens is None:
        return None
    return {"content": [{**chosen, "top_logprobs": top} for chosen, top in tokens], "refusal": None}


def completion_body(
    *,
    served: str,
    fingerprint: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: dict | None,
) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": logprobs,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
