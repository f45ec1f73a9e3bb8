"""The one interface every router implements.

A router predicts, for each prompt, the expected quality in [0, 1] of every model it
knows (probability of a good answer; a 1-5 score maps to (score - 1) / 4). The strong
model is predicted like any other: it is not assumed perfect. Turning predictions into a
choice is the routing policy's job (`router_tasks.routers.routing`), not the router's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import pandas as pd


class Router(ABC):
    #: registry name, e.g. "knn"; set by subclasses
    kind: str = ""
    #: True for routers whose training wants a GPU (hours on a CPU at production sizes):
    #: the DAGs train them on the GPU queue and pool (`defaults.GPU_QUEUE`, `GPU_POOL`).
    #: They still fall back to the CPU where no GPU is visible.
    needs_gpu: bool = False

    def __init__(self, models: Sequence[str], strong_model: str, weak_model: str, params: dict | None = None):
        self.models = list(models)
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.params = dict(params or {})

    @classmethod
    def identity(cls, params: dict) -> dict:
        """What decides this router's output besides its params and labels: the ids (and,
        where a subclass can tell, the weights' hashes) of models it builds on. It goes into
        the train stage's key, so changing the embedding or base model retrains. Subclasses
        extend the dict (`{**super().identity(params), ...}`)."""
        return {}

    @abstractmethod
    def fit(self, labels: pd.DataFrame) -> "Router":
        """Train on a labels table (prompt_id, prompt, model, quality, ...)."""

    @abstractmethod
    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        """One row per prompt, one column per model in `self.models`, values in [0, 1]."""

    @abstractmethod
    def save(self, write_file) -> None:
        """Write weights through `write_file(name, data: bytes)`; config goes in router.json."""

    @classmethod
    @abstractmethod
    def load(cls, read_file, meta: dict) -> "Router":
        """Rebuild from `read_file(name) -> bytes` and the saved router.json content."""

    def strong_win_rate(self, prompts: Sequence[str], quality: pd.DataFrame | None = None) -> np.ndarray:
        """RouteLLM-compatible score: higher means more need for the strong model.

        Derived from the predicted quality gap, mapped from [-1, 1] to [0, 1].
        """
        q = self.predict_quality(prompts) if quality is None else quality
        gap = q[self.strong_model].to_numpy(float) - q[self.weak_model].to_numpy(float)
        return np.clip((gap + 1.0) / 2.0, 0.0, 1.0)
