"""MiniLM through ONNX Runtime with int8 weights: MiniLM's vectors at a fraction of its cost.

The shipped MiniLM (its transformer, mean pooling and L2 norm in one graph) is exported
to ONNX by torch and its weights quantised to int8 per output channel by ONNX Runtime's
dynamic quantisation (activations are quantised on the fly). Per channel matters: one
scale per tensor moves the vectors much further from MiniLM's than one scale per output
channel does (`docs/results/2026-12-05-fast-routing.md`).

Built once per machine from the installed MiniLM into the model cache
(`core.defaults.model_cache_dir()/onnx/<model id>/`), under a file lock, through a
temporary folder renamed into place (the same scheme as `static_embeddings`). Export and
quantisation need torch and `onnx`; reading the built model needs only `onnxruntime` and
`tokenizers`. Prompts are cut at MiniLM's 256 word pieces, as sentence-transformers cuts
them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_tasks.core.defaults import model_cache_dir

log = logging.getLogger(__name__)

#: MiniLM's max_seq_length in sentence-transformers: longer prompts are cut there
MAX_TOKENS = 256
_MODEL_FILE = "model-int8.onnx"
_INFO_FILE = "tela_onnx.json"
#: ONNX Runtime threads per session; one: a gateway scores one prompt per call per core
THREADS_ENV = "TELA_ONNX_THREADS"

_lock = threading.Lock()
_loaded: dict[str, OnnxMiniLM] = {}


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def onnx_model_id(minilm_id: str) -> str:
    return f"{minilm_id}-onnx-int8pc-ort{_package_version('onnxruntime') or 'missing'}"


class OnnxMiniLM:
    """A built model: `encode(texts) -> float32 (n, 384)` unit rows."""

    def __init__(self, folder: str | Path, minilm_path: str):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get(THREADS_ENV, "1") or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / _MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(os.path.join(minilm_path, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        info = json.loads((folder / _INFO_FILE).read_text())
        self.model_id: str = info["model_id"]
        self.sha256: str = info["sha256"]

    def _run(self, encodings) -> np.ndarray:
        n, width = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.zeros((n, width), np.int64)
        mask = np.zeros((n, width), np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(None, feed)[0].astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One prompt per run: dynamic quantisation scales the activations by the whole
        batch (padding included), so a batched prompt's vector would depend on its batch
        (by up to ~0.02 per coordinate); one at a time, a prompt always gets the same vector."""
        out = np.empty((len(texts), 384), np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch_fast(list(texts))):
            out[i] = self._run([enc])[0]
        return out


def build_onnx(minilm_path: str, model_id: str, out_dir: str | Path) -> Path:
    """Export MiniLM (+ mean pooling + L2 norm) to ONNX and quantise its weights to int8."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = time.time()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = tok(["a prompt", "a longer prompt to pad"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fp32 = out_dir / "model-fp32.onnx"
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            Pooled(model),
            tuple(sample[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(str(fp32), str(out_dir / _MODEL_FILE), weight_type=QuantType.QInt8, per_channel=True)
    fp32.unlink()
    sha = hashlib.sha256((out_dir / _MODEL_FILE).read_bytes()).hexdigest()
    info = {
        "model_id": model_id,
        "sha256": sha,
        "onnxruntime": _package_version("onnxruntime"),
        "quantisation": "dynamic, int8 weights per channel",
        "build_seconds": round(time.time() - started, 1),
    }
    (out_dir / _INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    log.info("built %s in %.0f s", model_id, time.time() - started)
    return out_dir


def load_onnx(minilm_path: str, model_id: str) -> OnnxMiniLM:
    """The int8 model for `model_id`, built into the model cache on first use, once per process."""
    with _lock:
        if model_id in _loaded:
            return _loaded[model_id]
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise RuntimeError(f"the minilm-int8 representation needs the PyPI package 'onnxruntime': {err}") from err
        folder = model_cache_dir() / "onnx" / model_id
        if not (folder / _INFO_FILE).exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            with open(folder.parent / f".{model_id}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if not (folder / _INFO_FILE).exists():
                        log.info("building %s (once per machine) in %s", model_id, folder)
                        tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=folder.parent))
                        try:
                            build_onnx(minilm_path, model_id, tmp)
                            os.replace(tmp, folder)
                        finally:
                            shutil.rmtree(tmp, ignore_errors=True)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        model = OnnxMiniLM(folder, minilm_path)
        _loaded[model_id] = model
        return model
