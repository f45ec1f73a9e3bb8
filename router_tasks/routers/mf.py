"""Matrix-factorisation router (RouteLLM's MF idea) over MiniLM prompt embeddings.

RouteLLM scores a (prompt, model) pair as `w . (normalize(v_model) * W e_prompt)`: the
prompt embedding is projected to a small space, multiplied element-wise with a learned
model embedding, and a linear head turns that into a logit. RouteLLM trains it on
pairwise wins; we predict each model's quality directly, so the loss is binary
cross-entropy against the quality label (soft targets in [0, 1]), and a per-model bias
carries each model's base rate. That lets one router cover any number of models and use
labels where only one model was judged.

Torch is imported lazily so importing the registry (e.g. from a DAG file) stays cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import label_matrix
from router_tasks.routers.embedding_router import DEFAULT_REPRESENTATION, EmbeddingRouter

log = logging.getLogger(__name__)

WEIGHTS_FILE = "mf.safetensors"


def _build(n_models: int, in_dim: int, dim: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class MF(nn.Module):
        def __init__(self):
            super().__init__()
            self.text_proj = nn.Linear(in_dim, dim, bias=False)
            self.model_emb = nn.Embedding(n_models, dim)
            self.head = nn.Linear(dim, 1, bias=False)
            self.model_bias = nn.Embedding(n_models, 1)
            nn.init.zeros_(self.model_bias.weight)

        def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            h = self.text_proj(x) * F.normalize(self.model_emb(m), dim=-1)
            return (self.head(h) + self.model_bias(m)).squeeze(-1)

    return MF()


class MFRouter(EmbeddingRouter):
    kind = "mf"
    # Fixed, conventional settings (few epochs: more overfit ~10k prompts). They were not
    # chosen on the data the README reports: those figures are cross-fit and
    # leave-subject-out measurements (benchmark_scripts/router_quality.py).
    DEFAULT_PARAMS = {
        "dim": 64,
        "epochs": 10,
        "lr": 0.003,
        "weight_decay": 0.0001,
        "batch_size": 256,
        "seed": 0,
        "representation": DEFAULT_REPRESENTATION,
    }

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):
        super().__init__(models, strong_model, weak_model, params, embedder)
        self.net = None
        self.history: list[float] = []  # mean training loss per epoch

    def fit(self, labels: pd.DataFrame) -> MFRouter:
        import torch

        prompts, quality = label_matrix(labels, self.models)
        if not len(prompts):
            raise ValueError("mf router: no labelled prompts to train on")
        self.fit_representation(prompts["prompt"].tolist())
        emb = self.embed(prompts["prompt"].tolist())
        rows, cols = np.nonzero(~np.isnan(quality))
        x_all = torch.from_numpy(emb)
        p_idx = torch.from_numpy(rows.astype(np.int64))
        m_idx = torch.from_numpy(cols.astype(np.int64))
        y = torch.from_numpy(quality[rows, cols].astype(np.float32))

        threads = torch.get_num_threads()
        # The matrices are tiny: one thread is as fast, and OpenMP threads spinning on a
        # busy machine make epochs many times slower. fork_rng: seeding
        # must not change the caller's global torch RNG.
        torch.set_num_threads(1)
        try:
            self._train(x_all, p_idx, m_idx, y)
        finally:
            torch.set_num_threads(threads)
        return self

    def _train(self, x_all, p_idx, m_idx, y) -> None:
        """Mini-batch AdamW on BCE(logit(prompt, model), quality), seeded."""
        import torch
        from torch.nn import functional as F

        p = self.params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(p["seed"]))
            self.net = _build(len(self.models), x_all.shape[1], int(p["dim"]))
            # start each model's bias at its base-rate logit so training learns the
            # per-prompt differences rather than spending epochs on the mean
            with torch.no_grad():
                for j in range(len(self.models)):
                    sel = y[m_idx == j]
                    if len(sel):
                        rate = float(sel.mean().clamp(0.02, 0.98))
                        self.net.model_bias.weight[j, 0] = float(np.log(rate / (1 - rate)))
            opt = torch.optim.AdamW(self.net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
            gen = torch.Generator().manual_seed(int(p["seed"]))
            bs = int(p["batch_size"])
            started = time.time()
            self.net.train()
            self.history = []
            for epoch in range(int(p["epochs"])):
                order = torch.randperm(len(y), generator=gen)
                total = 0.0
                for start in range(0, len(order), bs):
                    b = order[start : start + bs]
                    logits = self.net(x_all[p_idx[b]], m_idx[b])
                    loss = F.binary_cross_entropy_with_logits(logits, y[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(b)
                self.history.append(total / len(y))
                if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == int(p["epochs"]):
                    log.info(
                        "mf epoch %d/%d: loss %.4f (%.1f s)",
                        epoch + 1,
                        p["epochs"],
                        self.history[-1],
                        time.time() - started,
                    )
            self.net.eval()

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        import torch

        if self.net is None:
            raise RuntimeError("mf router: predict_quality before fit/load")
        prompts = list(prompts)
        if not prompts:
            return self._frame(np.zeros((0, len(self.models))))
        x = torch.from_numpy(self.embed(prompts))
        out = np.empty((len(prompts), len(self.models)), dtype=np.float64)
        with torch.no_grad():
            for j in range(len(self.models)):
                m = torch.full((len(x),), j, dtype=torch.long)
                out[:, j] = torch.sigmoid(self.net(x, m)).double().numpy()
        return self._frame(out)

    def save(self, write_file) -> None:
        from safetensors.torch import save

        write_file(WEIGHTS_FILE, save({k: v.contiguous() for k, v in self.net.state_dict().items()}))

    @classmethod
    def load(cls, read_file, meta: dict) -> MFRouter:
        from safetensors.torch import load

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        state = load(read_file(WEIGHTS_FILE))
        in_dim = state["text_proj.weight"].shape[1]
        router.net = _build(len(router.models), in_dim, int(router.params["dim"]))
        router.net.load_state_dict(state)
        router.net.eval()
        return router
