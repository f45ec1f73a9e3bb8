"""Label maths of the causal-LLM router: the five label tokens and 1-5 classes.

Quality in [0, 1] maps to the class `round(quality * 4) + 1` (half up), so a judge score
maps back to itself and a binary correct/wrong label to 5 / 1; a prediction is the
expected score under the softmax over the label tokens.
"""

from __future__ import annotations

import numpy as np

LABEL_TOKENS = tuple(f"[[{k}]]" for k in range(1, 6))


def quality_to_class(quality) -> np.ndarray:
    """Class index 0..4 (score 1..5) of qualities in [0, 1]: round(q * 4), halves up."""
    q = np.asarray(quality, dtype=np.float64)
    return np.clip(np.floor(q * 4.0 + 0.5), 0, 4).astype(np.int64)


def expected_quality(probs) -> np.ndarray:
    """(E[score] - 1) / 4 for rows of probabilities over scores 1..5."""
    return np.asarray(probs, dtype=np.float64) @ np.linspace(0.0, 1.0, 5)


def prob_at_least(probs, score: int) -> np.ndarray:
    """P(score >= `score`): the seed's thresholded alternative to the expected quality."""
    if not 1 <= score <= 5:
        raise ValueError(f"score must be in 1..5, got {score}")
    return np.asarray(probs, dtype=np.float64)[:, score - 1 :].sum(axis=1)


def class_weights(classes: np.ndarray, cap: float) -> np.ndarray:
    """Inverse-frequency weights for the 5 classes (mean 1 over the examples), capped."""
    counts = np.bincount(classes, minlength=5).astype(np.float64)
    present = counts > 0
    w = np.ones(5)
    w[present] = len(classes) / (present.sum() * counts[present])
    return np.clip(w, 1.0 / cap, cap)
