"""The base class of the routers that work on prompt vectors (knn, mf, ensemble)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import Router, resolve_params
from router_tasks.routers.embeddings import (
    FITTED_REPRESENTATIONS,
    REPRESENTATIONS,
    Embedder,
    embedding_model,
    fit_representation,
)

#: the prompt representation of an embedding router that names none (and of every router
#: saved before the param existed)
DEFAULT_REPRESENTATION = "minilm"


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
        name = params.get("representation") or DEFAULT_REPRESENTATION
        return {**super().identity(params), "embedding_model": embedding_model(name).model_id}

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):
        super().__init__(models, strong_model, weak_model, resolve_params(self, params))
        if self.params.get("representation", DEFAULT_REPRESENTATION) not in REPRESENTATIONS:
            raise ValueError(
                f"{self.kind} router: unknown representation {self.params['representation']!r}; "
                f"known: {list(REPRESENTATIONS)}"
            )
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
            self._embedder = Embedder(model=self.representation)
        return self._embedder

    @embedder.setter
    def embedder(self, value) -> None:
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
