"""Shared pieces of the routers: the labels matrix and the embedding-based base class."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.core.schemas import ROUTER_LABEL_COLUMNS as LABEL_COLUMNS
from router_tasks.routers.base import Router



def check_labels(labels: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Labels rows usable for training: required columns present, quality in [0, 1].

    Rows whose quality is null (a failed judgement) carry no signal and are dropped;
    anything else out of range is an upstream bug and raises, naming the row.
    """
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table lacks column(s) {missing}; has {list(labels.columns)}")
    df = labels.loc[labels["quality"].notna(), list(LABEL_COLUMNS)].copy()
    df["quality"] = df["quality"].astype(float)
    bad = df[(df["quality"] < 0) | (df["quality"] > 1)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"labels row {bad.index[0]} (prompt_id={row['prompt_id']}, model={row['model']}): "
            f"quality {row['quality']} is outside [0, 1]"
        )
    for col in ("prompt_id", "prompt", "model"):
        nulls = df[df[col].isna()]
        if len(nulls):
            raise ValueError(f"labels row {nulls.index[0]}: {col} is null")
    if models is not None:
        df = df[df["model"].isin(list(models))]
    return df


def label_matrix(labels: pd.DataFrame, models: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(prompts table [prompt_id, prompt], quality matrix (n_prompts, n_models) with NaN gaps).

    Duplicate (prompt, model) labels are averaged; prompts are sorted by id so the same
    labels always give the same matrix, whatever their row order.
    """
    df = check_labels(labels, models)
    q = df.groupby(["prompt_id", "model"], sort=True)["quality"].mean().unstack("model")
    q = q.reindex(columns=list(models))
    prompts = df.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"].reindex(q.index)
    table = pd.DataFrame({"prompt_id": q.index.astype(str), "prompt": prompts.to_numpy()})
    return table, q.to_numpy(dtype=np.float64)


def resolve_params(router_cls, params: dict | None) -> dict:
    """`router_cls.DEFAULT_PARAMS` overlaid with `params`; unknown names raise.

    The train stage puts the resolved dict in its config, so changing a default in code
    changes the artifact key instead of silently reusing a router trained the old way.
    """
    defaults = dict(getattr(router_cls, "DEFAULT_PARAMS", {}))
    unknown = set(params or {}) - set(defaults)
    if unknown:
        raise ValueError(
            f"{router_cls.kind} router: unknown param(s) {sorted(unknown)}; known: {sorted(defaults)}"
        )
    return {**defaults, **(params or {})}


class EmbeddingRouter(Router):
    """A router that works on MiniLM prompt embeddings.

    `embedder` turns a list of prompts into unit vectors; the default caches in memory
    only. Train/score code hands in an `Embedder(store)` so vectors are cached in the
    artifact store too (see `router_tasks.routers.embeddings`).
    """

    DEFAULT_PARAMS: dict = {}

    @classmethod
    def identity(cls, params: dict) -> dict:
        from router_tasks.routers.embeddings import MODEL_ID

        return {**super().identity(params), "embedding_model": MODEL_ID}

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):
        super().__init__(models, strong_model, weak_model, resolve_params(self, params))
        self._embedder = embedder

    @property
    def embedder(self):
        if self._embedder is None:
            from router_tasks.routers.embeddings import Embedder

            self._embedder = Embedder()
        return self._embedder

    @embedder.setter
    def embedder(self, value) -> None:
        self._embedder = value

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder(list(prompts)), dtype=np.float32)

    def _frame(self, quality: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(np.clip(quality, 0.0, 1.0), columns=list(self.models))


def torch_threads(cpu_threads: int, on_gpu: bool, minimum_only: bool = False):
    """Context manager: torch's CPU thread count for a router's work, then restored.

    `cpu_threads` > 0 is used as given. Otherwise, on a GPU nothing changes; on the CPU it
    is the cores the 1-minute load average leaves idle (at least 1): two threads on two
    shared cores thrash (a training step went from 0.07 s to 3 s). `minimum_only` forces
    one thread (tiny test models, where threads cost more than they give).
    """
    import contextlib
    import os

    import torch

    n = int(cpu_threads)
    if n <= 0 and on_gpu:
        return contextlib.nullcontext()
    if n <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = 1 if minimum_only else max(1, min(torch.get_num_threads(), int(cores - busy + 0.5)))

    @contextlib.contextmanager
    def ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return ctx()
