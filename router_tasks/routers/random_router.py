"""Random baseline router (RouteLLM's "random" router): any learned router must beat it.

Each (prompt, model) quality is an independent uniform draw, so the strong/weak ranking
it induces is random. The draw is a hash of (seed, model, normalised prompt) rather than
a stateful RNG: the same prompt always gets the same score, whatever the batch or order,
and a saved-and-loaded router predicts exactly what the original did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.core.prompts import normalize_prompt
from router_tasks.routers.base import Router, check_labels, resolve_params


class RandomRouter(Router):
    kind = "random"
    DEFAULT_PARAMS = {"seed": 0}

    def __init__(self, models, strong_model, weak_model, params=None):
        super().__init__(models, strong_model, weak_model, resolve_params(type(self), params))

    def fit(self, labels: pd.DataFrame) -> RandomRouter:
        check_labels(labels, self.models)  # same input contract as the learned routers
        return self

    def _draw(self, model: str, prompt: str) -> float:
        text = f"{self.params['seed']}\0{model}\0{normalize_prompt(prompt)}"
        return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        prompts = list(prompts)
        out = np.array([[self._draw(m, p) for m in self.models] for p in prompts], dtype=np.float64)
        return pd.DataFrame(out.reshape(len(prompts), len(self.models)), columns=list(self.models))

    def save(self, write_file) -> None:
        """Nothing beyond router.json: the seed is in params."""

    @classmethod
    def load(cls, read_file, meta: dict) -> RandomRouter:
        return cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
