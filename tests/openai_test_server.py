"""A scripted OpenAI-compatible HTTP server for tests (test infrastructure, not product code).

It speaks the real wire protocol, so the code under test runs its real `openai` client,
retries and timeouts over a real socket. A `rule(request_body) -> Reply | str` decides
each reply; the server records every request and can answer with errors.

    with ScriptedOpenAIServer(lambda body: "hello") as srv:
        ... srv.base_url ...   # "http://127.0.0.1:PORT/v1"
        srv.count()            # chat requests received
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

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


def last_user_text(body: dict) -> str:
    msgs = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return msgs[-1]["content"] if msgs else ""


class ScriptedOpenAIServer:
    def __init__(self, rule: Callable[[dict], "Reply | str"] | None = None, *, api_key: str | None = None):
        self.rule = rule or (lambda body: f"echo: {last_user_text(body)}")
        self.api_key = api_key  # if set, requests must carry "Authorization: Bearer <key>"
        self.requests: list[dict] = []  # chat request bodies, in arrival order
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> "ScriptedOpenAIServer":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": []})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                auth = self.headers.get("Authorization", "")
                with outer._lock:
                    outer.requests.append(body)
                    outer.auth_headers.append(auth)
                if outer.api_key is not None and auth != f"Bearer {outer.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}},
                                      {"x-should-retry": "false"})
                reply = outer.rule(body)
                if isinstance(reply, str):
                    reply = Reply(content=reply)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    return self._send(reply.status, {"error": {"message": reply.error_message,
                                                               "type": "server_error"}}, reply.headers)
                words_in = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                                 "message": {"role": "assistant", "content": reply.content}}],
                    "usage": {
                        "prompt_tokens": reply.prompt_tokens if reply.prompt_tokens is not None else words_in,
                        "completion_tokens": reply.completion_tokens if reply.completion_tokens is not None
                        else len((reply.content or "").split()),
                        "total_tokens": 0,
                    },
                }, reply.headers)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

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


# Retries in tests should not wait the client's default backoff (0.5-8 s).
FAST_RETRY = {"retry-after-ms": "5"}


def write_prompts(artifact_root: str, rows: list[dict]) -> dict:
    """A prompts artifact (ingest schema) through the real stage contract, for tests."""
    from router_tasks.prompts import prompt_id
    from router_tasks.stage import run_stage
    from router_tasks.store import ArtifactStore

    cols = ["prompt_id", "prompt", "dataset", "gold_answer", "gold_type", "reference_answer", "category", "shard"]
    full = []
    for r in rows:
        r = {"dataset": "test", "gold_answer": None, "gold_type": None, "reference_answer": None,
             "category": None, "shard": 0, **r}
        r.setdefault("prompt_id", prompt_id(r["prompt"]))
        full.append(r)
    df = pd.DataFrame(full, columns=cols)

    def compute(ctx):
        ctx.write_table(df)

    return run_stage("ingest", "test", compute, config={"rows": full}, store=ArtifactStore(artifact_root))
