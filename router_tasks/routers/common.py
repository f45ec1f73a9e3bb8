"""Shared pieces of the routers: the labels matrix and the embedding-based base class."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import Router
# owned by checks (the causal-LLM router needs them without the embedding layer); re-exported
from router_tasks.routers.checks import LABEL_COLUMNS, check_labels, resolve_params  # noqa: F401

#: the prompt representation of an embedding router that names none (and of every router
#: saved before the param existed)
DEFAULT_REPRESENTATION = "minilm"


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
    """A router that works on prompt vectors: its `representation` param names which
    (`embeddings.REPRESENTATIONS`: "minilm" by default, "minilm-static" the fast one).

    `embedder` turns a list of prompts into unit vectors; the default caches in memory
    only. Train/score code hands in an `Embedder(store)` so vectors are cached in the
    artifact store too (see `router_tasks.routers.embeddings`). An `Embedder` for another
    vector model is re-pointed at the router's representation: a router is always served
    with the representation it was trained on.
    """

    DEFAULT_PARAMS: dict = {"representation": DEFAULT_REPRESENTATION}

    @classmethod
    def identity(cls, params: dict) -> dict:
        from router_tasks.routers.embeddings import embedding_model

        name = params.get("representation") or DEFAULT_REPRESENTATION
        return {**super().identity(params), "embedding_model": embedding_model(name).model_id}

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):
        from router_tasks.routers.embeddings import REPRESENTATIONS

        super().__init__(models, strong_model, weak_model, resolve_params(self, params))
        if self.params.get("representation", DEFAULT_REPRESENTATION) not in REPRESENTATIONS:
            raise ValueError(f"{self.kind} router: unknown representation {self.params['representation']!r}; "
                             f"known: {list(REPRESENTATIONS)}")
        self._embedder = None
        if embedder is not None:
            self.embedder = embedder

    @property
    def representation(self) -> str:
        """The prompt representation this router is trained on and served with."""
        return self.params.get("representation") or DEFAULT_REPRESENTATION

    @property
    def embedder(self):
        if self._embedder is None:
            from router_tasks.routers.embeddings import Embedder

            self._embedder = Embedder(model=self.representation)
        return self._embedder

    @embedder.setter
    def embedder(self, value) -> None:
        from router_tasks.routers.embeddings import FITTED_REPRESENTATIONS, Embedder

        if isinstance(value, Embedder) and value.model.name != self.representation:
            value = value.with_model(self.representation)
        fitted = getattr(self._embedder, "fitted", None)
        if self.representation in FITTED_REPRESENTATIONS and isinstance(value, Embedder) and fitted is not None:
            self._embedder.teacher = value  # a fitted table stays; the embedder brings its store and caches
            return
        self._embedder = value

    def fit_representation(self, texts: Sequence[str]) -> None:
        """Fit the representation on the training prompts where it is fitted per router
        (`embeddings.FITTED_REPRESENTATIONS`); the others need nothing. Called first by fit."""
        from router_tasks.routers.embeddings import FITTED_REPRESENTATIONS, Embedder, fit_representation

        if self.representation not in FITTED_REPRESENTATIONS:
            return
        current = self._embedder
        teacher = getattr(current, "teacher", current)
        if not isinstance(teacher, Embedder):
            teacher = Embedder(model=self.representation)
        self.embedder = fit_representation(self.representation, list(texts), teacher)

    def representation_arrays(self) -> dict | None:
        """What a fitted representation stores with the router (None for the others)."""
        fitted = getattr(self._embedder, "fitted", None)
        return None if fitted is None else fitted.arrays

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder(list(prompts)), dtype=np.float32)

    def _frame(self, quality: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(np.clip(quality, 0.0, 1.0), columns=list(self.models))
