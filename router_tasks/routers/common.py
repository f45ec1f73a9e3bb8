"""Shared pieces of the routers: the labels matrix and the embedding-based base class."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import Router
# owned by checks (the causal-LLM router needs them without the embedding layer); re-exported
from router_tasks.routers.checks import LABEL_COLUMNS, check_labels, resolve_params  # noqa: F401



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
