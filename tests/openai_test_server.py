"""A scripted OpenAI-compatible HTTP server for tests (test infrastructure, not product code).

It speaks the real wire protocol, so the code under test runs its real `openai` client,
retries and timeouts over a real socket. A `rule(request_body) -> Reply | str` decides
each reply; the server records every request and can answer with errors.

    with ScriptedOpenAIServer(lambda body: "hello") as srv:
        ... srv.base_url ...   # "http://127.0.0.1:PORT/v1"
        srv.count()            # chat requests received

Fault injection (`faults=Faults(...)`, or assign `srv.faults` between phases of a test):
every chat request is one *attempt* of its body (attempt 0, 1, ... for repeats of the
same JSON body, e.g. the client's retries). The first `fail_first` attempts of each body
fail; after that a draw, deterministic in (seed, body, attempt), picks at most one of
429 / 500 / timeout / truncated / no-verdict at the configured rates, so a retried
request can succeed and a rerun of the same test sees the same faults.

    srv = ScriptedOpenAIServer(rule, faults=Faults(latency_s=0.2, rate_429=0.1, retry_after_ms=50))
    srv.max_in_flight, srv.statuses(), srv.resent_after_success, srv.stats()

Streams: `Reply(stream="json")` answers a stream request with a plain completion (as a
server that ignores `stream` does); `Reply(stream="break", break_after=n)` sends the first n
events of the stream and drops the connection (status "broken" in `statuses()`);
`Reply(chunk_delay_s=s)` streams its events `s` apart.

Batch API: the Files + Batch subset the `openai` client and Airflow's OpenAIHook use
(`POST /v1/files`, `GET /v1/files[/{id}[/content]]`, `DELETE /v1/files/{id}`,
`POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`). A batch's
lines go through the same `rule` as online chat (faults and delays are not applied) and
count in `batch_lines` / `batch_requests`, never in `count()`.

Log-probabilities: a request with `logprobs: true` gets `choices[0].logprobs.content`, one
entry per token of the reply (`tokens()`: "[[", "]]", digits, words and punctuation
apart), each with `top_logprobs` from `Reply.alternatives`; `ScriptedOpenAIServer(...,
logprobs=False)` answers `logprobs: null` instead, like an endpoint without them.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import re
import select
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd


@dataclass
class Reply:
    content: str | None = None
    status: int = 200
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # default: words in the request's messages
    completion_tokens: int | None = None  # default: words in content
    headers: dict = field(default_factory=dict)
    error_message: str = "scripted failure"
    delay_s: float = 0.0
    # Token text -> its top alternatives as probabilities, for requests that ask for
    # `logprobs` (a token not named here is certain: its only alternative is itself).
    alternatives: dict = field(default_factory=dict)
    # how a stream request is answered: "sse" (a stream), "json" (a plain completion, as a
    # server that ignores `stream` does) or "break" (the first `break_after` events of the
    # stream, then the connection drops: 0 drops it before the first event)
    stream: str = "sse"
    break_after: int = 2
    chunk_delay_s: float = 0.0  # "sse": wait this long before each event (a slow stream)


@dataclass(frozen=True)
class Faults:
    """Fault switches for online chat requests. Rates are fractions of attempts, in [0, 1]."""

    KINDS = ("429", "500", "timeout", "truncated", "no_verdict")

    seed: int = 0
    latency_s: float = 0.0  # every chat reply (200, 500, truncated, late) waits this long first
    latency_429_s: float = 0.0  # 429s come back after this (a gateway's limiter answers fast)
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0  # wait `timeout_sleep_s` (or until the client hangs up), then answer
    rate_truncated: float = 0.0  # a 200 whose JSON body is cut in half (Content-Length matches the cut)
    rate_no_verdict: float = 0.0  # judge-style requests (messages mention "[["): [[n]] removed from the reply
    fail_first: int = 0  # the first N attempts of every distinct body fail...
    fail_first_with: int | str = 500  # ...with this status (429, 5xx) or fault ("timeout", "truncated", ...)
    retry_after_ms: float | None = 5.0  # "retry-after-ms" on 429/5xx faults (None: not sent)
    retry_after_s: float | None = None  # "Retry-After" (seconds) on 429/5xx faults (None: not sent)
    timeout_sleep_s: float = 5.0

    def __post_init__(self):
        rates = (self.rate_429, self.rate_500, self.rate_timeout, self.rate_truncated, self.rate_no_verdict)
        if any(r < 0 for r in rates) or sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {rates}")
        if str(self.fail_first_with) not in self.KINDS and not str(self.fail_first_with).isdigit():
            raise ValueError(f"fail_first_with: a status code or one of {self.KINDS}, got {self.fail_first_with!r}")

    def retry_headers(self) -> dict:
        h = {}
        if self.retry_after_ms is not None:
            h["retry-after-ms"] = f"{self.retry_after_ms:g}"
        if self.retry_after_s is not None:
            h["retry-after"] = f"{self.retry_after_s:g}"
        return h

    def pick(self, key: str, attempt: int) -> str | None:
        """The fault for this attempt of this body: one of KINDS, another status code (as a string) or None."""
        if attempt < self.fail_first:
            return str(self.fail_first_with)
        u = _unit(f"{self.seed}|{key}|{attempt}")
        for name, rate in (
            ("429", self.rate_429),
            ("500", self.rate_500),
            ("timeout", self.rate_timeout),
            ("truncated", self.rate_truncated),
            ("no_verdict", self.rate_no_verdict),
        ):
            if u < rate:
                return name
            u -= rate
        return None


NO_FAULTS = Faults()
_VERDICT = re.compile(r"\[\[[^\[\]]*\]\]")


def _unit(s: str) -> float:
    """A deterministic uniform number in [0, 1) from a string."""
    return int(hashlib.sha256(s.encode()).hexdigest()[:13], 16) / 16**13


def body_key(body: dict) -> str:
    """The identity of a request body (key order ignored): retries of one call share it."""
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


def last_user_text(body: dict) -> str:
    msgs = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return msgs[-1]["content"] if msgs else ""


_TOKEN = re.compile(r"\[\[|\]\]|\d|\s*[A-Za-z_']+|\s+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """The scripted server's tokenizer: '[[', ']]' and each digit are tokens of their own."""
    return _TOKEN.findall(text)


def _logprobs(body: dict, reply: Reply) -> dict | None:
    if not body.get("logprobs"):
        return None
    top_n = int(body.get("top_logprobs") or 0)
    content = []
    for tok in tokens(reply.content or ""):
        alts = reply.alternatives.get(tok) or {tok: 1.0}
        ranked = sorted(alts.items(), key=lambda kv: -kv[1])
        entry = lambda t, p: {
            "token": t,
            "logprob": math.log(p) if p > 0 else -9999.0,  # noqa: E731
            "bytes": list(t.encode()),
        }
        content.append(
            {**entry(tok, alts.get(tok, ranked[0][1])), "top_logprobs": [entry(t, p) for t, p in ranked[:top_n]]}
        )
    return {"content": content, "refusal": None}


def _completion(body: dict, reply: Reply, with_logprobs: bool = True) -> dict:
    words_in = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else words_in
    completion_tokens = (
        reply.completion_tokens if reply.completion_tokens is not None else len((reply.content or "").split())
    )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "finish_reason": reply.finish_reason,
                "message": {"role": "assistant", "content": reply.content},
                "logprobs": _logprobs(body, reply) if with_logprobs else None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _sse(body: dict, reply: Reply) -> bytes:
    """A streamed reply: one chunk per word, then a usage chunk (if asked) and [DONE]."""
    done = _completion(body, reply)
    base = {"id": done["id"], "object": "chat.completion.chunk", "created": done["created"], "model": done["model"]}
    words = (reply.content or "").split(" ")
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [
        {**base, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}]}
        for i, w in enumerate(words)
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": done["usage"]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _error(message: str, type_: str = "server_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default listen backlog (5) drops SYNs under a burst of connects


class ScriptedOpenAIServer:
    def __init__(
        self,
        rule: Callable[[dict], Reply | str] | None = None,
        *,
        api_key: str | None = None,
        faults: Faults | None = None,
        batch_polls: int = 0,
        batch_outcome: str = "completed",
        logprobs: bool = True,
    ):
        self.rule = rule or (lambda body: f"echo: {last_user_text(body)}")
        self.api_key = api_key  # if set, requests must carry "Authorization: Bearer <key>"
        self.faults = faults or NO_FAULTS  # read per request: may be swapped while running
        self.logprobs = logprobs  # False: `logprobs` is ignored and answered with null
        # GET /batches/{id} answers "in_progress" this many times before the batch finishes;
        # then its status becomes `batch_outcome` ("completed", "failed" or "expired"; "expired_partial":
        # expired after the first half of its lines ran, their replies in the output file).
        self.batch_polls = batch_polls
        self.batch_outcome = batch_outcome
        self.requests: list[dict] = []  # chat request bodies, in arrival order
        self.auth_headers: list[str] = []
        # measurements (chat requests only; read them through the methods or under _lock)
        self.in_flight = 0
        self.max_in_flight = 0  # most chat requests between arrival and response sent at once
        self.status_counter: Counter = Counter()  # status sent -> count ("abandoned": client hung up)
        self.fault_counter: Counter = Counter()  # fault injected -> count
        self.attempts: Counter = Counter()  # body_key -> chat requests received
        self.successes: Counter = Counter()  # body_key -> complete 200 replies sent
        self.resent_after_success = 0  # requests whose body had already had a complete 200 reply
        # Files + Batch API
        self.files: dict[str, dict] = {}  # id -> FileObject dict
        self.file_data: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}  # id -> Batch object dict
        self._batch_inputs: dict[str, tuple[list, list]] = {}  # id -> (valid lines, validation errors)
        self._batch_polls_seen: Counter = Counter()
        self.batch_requests: list[dict] = []  # bodies of processed batch lines
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> ScriptedOpenAIServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms a request on Linux).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _send_bytes(
                self, status: int, data: bytes, headers: dict | None = None, content_type: str = "application/json"
            ):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def _send_slow_stream(self, data: bytes, delay_s: float):
                """A stream written event by event, `delay_s` apart; the body ends when the connection closes."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for event in data.split(b"\n\n")[:-1]:
                        if not self._wait(delay_s):
                            return
                        self.wfile.write(event + b"\n\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _send_broken_stream(self, data: bytes, reply: Reply, book):
                """Headers promising all of `data`, its first `break_after` events, then a dropped connection."""
                events = data.split(b"\n\n")[: reply.break_after]
                book("broken")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(b"".join(e + b"\n\n" for e in events))
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                self._send_bytes(status, json.dumps(payload).encode(), headers)

            def _wait(self, seconds: float) -> bool:
                """Sleep `seconds`; False (early) if the client closed the connection meanwhile."""
                deadline = time.monotonic() + seconds
                sock = self.connection
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        readable, _, _ = select.select([sock], [], [], left)
                        if not readable:
                            continue
                        if sock.recv(1, socket.MSG_PEEK) == b"":
                            return False
                    except (OSError, ValueError):
                        return False
                    time.sleep(max(0.0, deadline - time.monotonic()))  # pipelined bytes: just wait
                return True

            def _route(self) -> list[str]:
                path = self.path.split("?", 1)[0].rstrip("/")
                return path.split("/")[2:] if path.startswith("/v1/") else []

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if outer.api_key is not None and auth != f"Bearer {outer.api_key}":
                    self._send(401, _error("bad key", "invalid_request_error"), {"x-should-retry": "false"})
                    return False
                return True

            def do_GET(self):
                parts = self._route()
                if parts == ["models"]:
                    return self._send(200, {"object": "list", "data": []})
                if parts[:1] in (["files"], ["batches"]) and not self._authorized():
                    return
                if parts == ["files"]:
                    with outer._lock:
                        data = list(outer.files.values())
                    return self._send(200, {"object": "list", "data": data, "has_more": False})
                if len(parts) in (2, 3) and parts[0] == "files":
                    with outer._lock:
                        obj, data = outer.files.get(parts[1]), outer.file_data.get(parts[1])
                    if obj is None:
                        return self._send(404, _error(f"No such File object: {parts[1]}", "invalid_request_error"))
                    if len(parts) == 2:
                        return self._send(200, obj)
                    if parts[2] == "content":
                        return self._send_bytes(200, data, content_type="application/octet-stream")
                if parts == ["batches"]:
                    with outer._lock:
                        data = list(outer.batches.values())[::-1]
                    return self._send(
                        200,
                        {
                            "object": "list",
                            "data": data,
                            "has_more": False,
                            "first_id": data[0]["id"] if data else None,
                            "last_id": data[-1]["id"] if data else None,
                        },
                    )
                if len(parts) == 2 and parts[0] == "batches":
                    batch = outer._poll_batch(parts[1])
                    if batch is None:
                        return self._send(404, _error(f"No batch with id {parts[1]}", "invalid_request_error"))
                    return self._send(200, batch)
                self._send(404, _error("not found", "invalid_request_error"))

            def do_DELETE(self):
                parts = self._route()
                if not self._authorized():
                    return
                if len(parts) == 2 and parts[0] == "files":
                    with outer._lock:
                        found = outer.files.pop(parts[1], None) is not None
                        outer.file_data.pop(parts[1], None)
                    if found:
                        return self._send(200, {"id": parts[1], "object": "file", "deleted": True})
                self._send(404, _error("not found", "invalid_request_error"))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self._route()
                if parts == ["chat", "completions"]:
                    try:
                        return self._chat(json.loads(raw or b"{}"))
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                        return
                if not parts or parts[0] not in ("files", "batches"):
                    return self._send(404, _error("not found", "invalid_request_error"))
                if not self._authorized():
                    return
                if parts == ["files"]:
                    return self._upload(raw)
                body = json.loads(raw or b"{}")
                if parts == ["batches"]:
                    status, obj = outer._create_batch(body)
                    return self._send(status, obj)
                if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
                    status, obj = outer._cancel_batch(parts[1])
                    return self._send(status, obj)
                self._send(404, _error("not found", "invalid_request_error"))

            def _upload(self, raw: bytes):
                ctype = self.headers.get("Content-Type", "")
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
                )
                fields, filename, content = {}, None, None
                for part in msg.iter_parts() if msg.is_multipart() else []:
                    name = part.get_param("name", header="content-disposition")
                    payload = part.get_payload(decode=True) or b""
                    if name == "file":
                        filename, content = part.get_filename() or "upload.jsonl", payload
                    elif name:
                        fields[name] = payload.decode()
                if content is None or "purpose" not in fields:
                    return self._send(
                        400, _error("multipart upload needs 'file' and 'purpose'", "invalid_request_error")
                    )
                self._send(200, outer._store_file(content, filename, fields["purpose"]))

            def _chat(self, body: dict):
                faults = outer.faults
                auth = self.headers.get("Authorization", "")
                key = body_key(body)
                with outer._lock:
                    outer.requests.append(body)
                    outer.auth_headers.append(auth)
                    attempt = outer.attempts[key]
                    outer.attempts[key] += 1
                    outer.resent_after_success += outer.successes[key] > 0
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                booked = False

                def book(sent: int | str, fault: str | None = None, complete: bool = False) -> None:
                    # Before the response is written: a client holding the reply sees the
                    # books already updated, and its next request never overlaps this one.
                    nonlocal booked
                    booked = True
                    with outer._lock:
                        outer.in_flight -= 1
                        outer.status_counter[sent] += 1
                        if fault is not None:
                            outer.fault_counter[fault] += 1
                        if complete:
                            outer.successes[key] += 1

                try:
                    if outer.api_key is not None and auth != f"Bearer {outer.api_key}":
                        book(401)
                        return self._send(401, _error("bad key", "invalid_request_error"), {"x-should-retry": "false"})
                    fault = faults.pick(key, attempt)
                    if fault is not None and fault.isdigit():
                        status = int(fault)
                        if not self._wait(faults.latency_429_s if status == 429 else faults.latency_s):
                            return book("abandoned", fault)
                        if status == 429:
                            payload = _error("Rate limit reached (scripted)", "requests", "rate_limit_exceeded")
                        else:
                            payload = _error(f"scripted fault {status}", "server_error")
                        book(status, fault)
                        return self._send(status, payload, faults.retry_headers())
                    if fault == "timeout" and not self._wait(faults.timeout_sleep_s):
                        return book("abandoned", fault)  # the client gave up, as intended
                    reply = outer._reply(body)
                    if not self._wait(faults.latency_s + reply.delay_s):
                        return book("abandoned", fault if fault == "timeout" else None)
                    if reply.status != 200:
                        book(reply.status, fault if fault == "timeout" else None)
                        return self._send(reply.status, _error(reply.error_message, "server_error"), reply.headers)
                    if fault == "no_verdict":  # only judge-style requests: their messages ask for [[n]]
                        if reply.content and "[[" in json.dumps(body.get("messages", [])):
                            reply = Reply(**{**reply.__dict__, "content": _VERDICT.sub("", reply.content)})
                        else:
                            fault = None
                    if body.get("stream") and reply.stream == "break":
                        return self._send_broken_stream(_sse(body, reply), reply, book)
                    if body.get("stream") and reply.stream == "sse" and reply.chunk_delay_s > 0:
                        book(200, fault, complete=True)
                        return self._send_slow_stream(_sse(body, reply), reply.chunk_delay_s)
                    if body.get("stream") and reply.stream == "sse":  # Server-Sent Events, as the real API streams
                        book(200, fault, complete=True)
                        return self._send_bytes(200, _sse(body, reply), reply.headers, "text/event-stream")
                    data = json.dumps(_completion(body, reply, outer.logprobs)).encode()
                    if fault == "truncated":
                        data = data[: len(data) // 2]
                    book(200, fault, complete=fault != "truncated")
                    self._send_bytes(200, data, reply.headers)
                finally:
                    if not booked:  # the rule raised: the connection drops without a reply
                        book("rule_error")

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # shutdown() waits up to one poll
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- replies ----------------------------------------------------------------------
    def _reply(self, body: dict) -> Reply:
        reply = self.rule(body)
        return Reply(content=reply) if isinstance(reply, str) else reply

    # -- files and batches --------------------------------------------------------------
    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self._lock:
            self.files[fid] = obj
            self.file_data[fid] = content
        return obj

    def _create_batch(self, body: dict) -> tuple[int, dict]:
        for req in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(req):
                return 400, _error(f"Missing required parameter: '{req}'.", "invalid_request_error")
        with self._lock:
            data = self.file_data.get(body["input_file_id"])
        if data is None:
            return 400, _error(f"No such File object: {body['input_file_id']}", "invalid_request_error")
        now = int(time.time())
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        batch = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "model": None,
        }
        lines, errors = [], []
        for n, text in enumerate(data.decode().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                ok = (
                    isinstance(line, dict)
                    and line.get("method") == "POST"
                    and line.get("url") == body["endpoint"]
                    and isinstance(line.get("body"), dict)
                    and isinstance(line.get("custom_id"), str)
                )
            except json.JSONDecodeError:
                ok = False
            if not ok:
                errors.append(
                    {
                        "code": "invalid_request",
                        "line": n,
                        "param": None,
                        "message": f"line {n}: needs custom_id, method POST, url {body['endpoint']!r}, body",
                    }
                )
            else:
                lines.append(line)
        ids = [ln["custom_id"] for ln in lines]
        if len(set(ids)) != len(ids):
            errors.append(
                {
                    "code": "duplicate_custom_id",
                    "line": None,
                    "param": None,
                    "message": "custom_id values must be unique within a batch",
                }
            )
        if not lines and not errors:
            errors.append({"code": "empty_file", "line": None, "param": None, "message": "the input file is empty"})
        batch["request_counts"]["total"] = len(lines)
        batch["model"] = lines[0]["body"].get("model") if lines else None
        with self._lock:
            self.batches[bid] = batch
            self._batch_inputs[bid] = (lines, errors)
        return 200, dict(batch)

    def _poll_batch(self, bid: str) -> dict | None:
        """GET /batches/{id}: advance the batch one step; its lines run when it completes."""
        with self._lock:
            batch = self.batches.get(bid)
            if batch is None:
                return None
            now = int(time.time())
            if batch["status"] == "cancelling":
                batch.update(status="cancelled", cancelled_at=now)
            if batch["status"] not in ("validating", "in_progress"):
                return dict(batch)
            lines, errors = self._batch_inputs[bid]
            self._batch_polls_seen[bid] += 1
            if errors:
                batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            elif self._batch_polls_seen[bid] <= self.batch_polls:
                batch.update(status="in_progress", in_progress_at=batch["in_progress_at"] or now)
            elif self.batch_outcome == "expired":
                batch.update(status="expired", expired_at=now)
            elif self.batch_outcome == "expired_partial":  # the window closed after half the lines ran
                batch["status"] = "finalizing"
            elif self.batch_outcome == "failed":
                batch.update(
                    status="failed",
                    failed_at=now,
                    errors={
                        "object": "list",
                        "data": [
                            {
                                "code": "scripted_failure",
                                "line": None,
                                "param": None,
                                "message": "scripted batch failure",
                            }
                        ],
                    },
                )
            else:
                batch["status"] = "finalizing"  # concurrent pollers see this while the lines run
            if batch["status"] != "finalizing":
                return dict(batch)
        return self._finish_batch(bid, lines)

    def _finish_batch(self, bid: str, lines: list[dict]) -> dict:
        out, err = [], []
        partial = self.batch_outcome == "expired_partial"
        if partial:
            lines = lines[: len(lines) // 2]
        for line in lines:
            body = line["body"]
            reply = self._reply(body)
            rid = f"req_{uuid.uuid4().hex[:24]}"
            if reply.status == 200:
                resp = {"status_code": 200, "request_id": rid, "body": _completion(body, reply, self.logprobs)}
                out.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
                        "custom_id": line["custom_id"],
                        "response": resp,
                        "error": None,
                    }
                )
            else:
                resp = {
                    "status_code": reply.status,
                    "request_id": rid,
                    "body": _error(reply.error_message, "server_error"),
                }
                err.append(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
                        "custom_id": line["custom_id"],
                        "response": resp,
                        "error": None,
                    }
                )
            with self._lock:
                self.batch_requests.append(body)
        to_bytes = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        out_id = self._store_file(to_bytes(out), f"{bid}_output.jsonl", "batch_output")["id"] if out else None
        err_id = self._store_file(to_bytes(err), f"{bid}_error.jsonl", "batch_output")["id"] if err else None
        now = int(time.time())
        with self._lock:
            batch = self.batches[bid]
            batch.update(
                status="expired" if partial else "completed",
                output_file_id=out_id,
                error_file_id=err_id,
                in_progress_at=batch["in_progress_at"] or now,
                finalizing_at=now,
                completed_at=now,
                request_counts={"total": len(lines), "completed": len(out), "failed": len(err)},
            )
            return dict(batch)

    def _cancel_batch(self, bid: str) -> tuple[int, dict]:
        with self._lock:
            batch = self.batches.get(bid)
            if batch is None:
                return 404, _error(f"No batch with id {bid}", "invalid_request_error")
            if batch["status"] not in ("validating", "in_progress"):
                return 400, _error(f"Cannot cancel a batch with status '{batch['status']}'.", "invalid_request_error")
            batch.update(status="cancelling", cancelling_at=int(time.time()))
            return 200, dict(batch)

    # -- inspection -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def count(self, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if model is None or r.get("model") == model)

    def user_texts(self, model: str | None = None) -> list[str]:
        with self._lock:
            return [last_user_text(r) for r in self.requests if model is None or r.get("model") == model]

    @property
    def batch_lines(self) -> int:
        """Batch input lines run through the rule (never counted by `count()`)."""
        with self._lock:
            return len(self.batch_requests)

    def statuses(self) -> dict:
        """Chat responses sent, by status code; "abandoned": the client hung up first."""
        with self._lock:
            return dict(self.status_counter)

    def stats(self) -> dict:
        """A snapshot of the server-side measurements, for tests and benchmarks."""
        with self._lock:
            return {
                "requests": len(self.requests),
                "distinct_bodies": len(self.attempts),
                "statuses": dict(self.status_counter),
                "faults": dict(self.fault_counter),
                "max_in_flight": self.max_in_flight,
                "resent_after_success": self.resent_after_success,
                "max_successes_per_body": max(self.successes.values(), default=0),
                "batch_lines": len(self.batch_requests),
            }


# Retries in tests should not wait the client's default backoff (0.5-8 s).
FAST_RETRY = {"retry-after-ms": "5"}


def write_prompts(artifact_root: str, rows: list[dict]) -> dict:
    """A prompts artifact (ingest schema) through the real stage contract, for tests."""
    from router_tasks.core.prompts import prompt_id
    from router_tasks.core.stage import run_stage
    from router_tasks.core.store import ArtifactStore

    cols = ["prompt_id", "prompt", "dataset", "gold_answer", "gold_type", "reference_answer", "category", "shard"]
    full = []
    for r in rows:
        r = {
            "dataset": "test",
            "gold_answer": None,
            "gold_type": None,
            "reference_answer": None,
            "category": None,
            "shard": 0,
            **r,
        }
        r.setdefault("prompt_id", prompt_id(r["prompt"]))
        full.append(r)
    df = pd.DataFrame(full, columns=cols)

    def compute(ctx):
        ctx.write_table(df)

    return run_stage("ingest", "test", compute, config={"rows": full}, store=ArtifactStore(artifact_root))
