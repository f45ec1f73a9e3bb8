"""Similarity-weighted k-nearest-neighbour router over prompt vectors (MiniLM by default).

For a new prompt and each model, take the k most similar training prompts that have a
label for that model; the predicted quality is the softmax(similarity / temperature)
weighted mean of their qualities, shrunk towards the model's overall mean by
`prior_weight` pseudo-neighbours (so a prompt unlike anything seen falls back to the
base rate rather than to the noise of a few distant neighbours).

No training beyond embedding the labelled prompts; the weights are the embedding matrix
and the quality matrix (NaN where a model has no label for a prompt).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import label_matrix
from router_tasks.routers.embedding_router import DEFAULT_REPRESENTATION, EmbeddingRouter

WEIGHTS_FILE = "knn.safetensors"
#: query rows per similarity block: bounds memory at ~_BLOCK x n_train floats
_BLOCK = 512


class KnnRouter(EmbeddingRouter):
    kind = "knn"
    # Fixed starting values, not a measured optimum: many softly weighted neighbours (a
    # smoothed local base rate) rather than a few sharp ones. The README's figures for
    # these are cross-fit / leave-subject-out measurements (benchmark_scripts/
    # router_quality.py), not the data they were picked on; the ensemble router chooses
    # how much to trust this component on a validation split of its own training data.
    DEFAULT_PARAMS = {"k": 200, "temperature": 0.2, "prior_weight": 2.0, "representation": DEFAULT_REPRESENTATION}

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):
        super().__init__(models, strong_model, weak_model, params, embedder)
        if int(self.params["k"]) < 1:
            raise ValueError(f"knn router: k must be >= 1, got {self.params['k']}")
        if float(self.params["temperature"]) <= 0:
            raise ValueError(f"knn router: temperature must be > 0, got {self.params['temperature']}")
        if float(self.params["prior_weight"]) < 0:
            raise ValueError(f"knn router: prior_weight must be >= 0, got {self.params['prior_weight']}")
        self.embeddings: np.ndarray | None = None  # (n_train, dim) float32, unit rows
        self.quality: np.ndarray | None = None  # (n_train, n_models) float32, NaN = no label

    def fit(self, labels: pd.DataFrame) -> KnnRouter:
        prompts, quality = label_matrix(labels, self.models)
        if not len(prompts):
            raise ValueError("knn router: no labelled prompts to train on")
        self.fit_representation(prompts["prompt"].tolist())
        return self.use_weights(self.embed(prompts["prompt"].tolist()), quality.astype(np.float32))

    def use_weights(self, embeddings: np.ndarray, quality: np.ndarray) -> KnnRouter:
        """Set the weights (from fit or a saved file) and build what scoring needs from
        them once, not per call: the model means and, per group of models labelled on the
        same prompts, those rows, their embeddings and qualities (one top-k search serves
        the whole group; RouteLLM-style data labels every model on every prompt)."""
        if quality.shape != (len(embeddings), len(self.models)):
            raise ValueError(
                f"knn weights: quality matrix {quality.shape} does not match "
                f"{len(embeddings)} prompts x {len(self.models)} models"
            )
        self.embeddings, self.quality = embeddings, quality
        groups: dict[bytes, list[int]] = {}
        masks = ~np.isnan(quality)
        for j in range(len(self.models)):
            groups.setdefault(np.packbits(masks[:, j]).tobytes(), []).append(j)
        self._groups = []
        for cols in groups.values():
            rows = np.flatnonzero(masks[:, cols[0]])
            self._groups.append(
                (
                    cols,
                    rows,
                    np.ascontiguousarray(embeddings[rows].T),
                    np.ascontiguousarray(quality[np.ix_(rows, cols)].T, dtype=np.float64),
                )
            )
        self._means = self._model_means()
        return self

    def _model_means(self) -> np.ndarray:
        with warnings.catch_warnings():  # a model with no label at all: NaN, handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(self.quality, axis=0) if len(self.quality) else np.full(len(self.models), np.nan)
        return np.where(np.isnan(means), 0.5, means)  # a model never labelled: know nothing

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        if self.embeddings is None:
            raise RuntimeError("knn router: predict_quality before fit/load")
        return self._frame(self.predict_quality_array(prompts))

    def predict_quality_array(self, prompts: Sequence[str]) -> np.ndarray:
        if self.embeddings is None:
            raise RuntimeError("knn router: predict_quality before fit/load")
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, len(self.models)))
        return np.clip(self.predict_embedded(self.embed(prompts)), 0.0, 1.0)

    def predict_embedded(self, queries: np.ndarray) -> np.ndarray:
        """(n, n_models) predicted quality for prompts already embedded (unit rows)."""
        if self.embeddings is None:
            raise RuntimeError("knn router: predict_quality before fit/load")
        prompts = queries
        k = int(self.params["k"])
        tau = float(self.params["temperature"])
        alpha = float(self.params["prior_weight"])
        means, groups = self._means, self._groups
        out = np.empty((len(prompts), len(self.models)), dtype=np.float64)
        for start in range(0, len(queries), _BLOCK):
            q = queries[start : start + _BLOCK]
            for cols, rows, emb_t, qual in groups:
                if not len(rows):
                    out[start : start + len(q), cols] = means[cols]
                    continue
                s = q @ emb_t  # cosine similarity to this group's labelled prompts: unit rows
                kk = min(k, len(rows))
                top = (
                    np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                    if kk < len(rows)
                    else np.broadcast_to(np.arange(len(rows)), s.shape)
                )
                s_top = np.take_along_axis(s, top, axis=1).astype(np.float64)
                w = np.exp((s_top - s_top.max(axis=1, keepdims=True)) / tau)
                w /= w.sum(axis=1, keepdims=True)
                for n, j in enumerate(cols):
                    knn = (w * qual[n][top]).sum(axis=1)
                    out[start : start + len(q), j] = (kk * knn + alpha * means[j]) / (kk + alpha)
        return out

    def save(self, write_file) -> None:
        from safetensors.numpy import save

        write_file(
            WEIGHTS_FILE,
            save({"embeddings": np.ascontiguousarray(self.embeddings), "quality": np.ascontiguousarray(self.quality)}),
        )

    @classmethod
    def load(cls, read_file, meta: dict) -> KnnRouter:
        from safetensors.numpy import load

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        tensors = load(read_file(WEIGHTS_FILE))
        router.use_weights(tensors["embeddings"], tensors["quality"])
        return router
