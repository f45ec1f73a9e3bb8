"""Cheap features of a prompt's text that the ensemble's parts read beside the prompt vector.

`prompt_features`: difficulty signals (length, numbers, sentences, operators, options);
`style_features`: question-form signals that carry across topics; hashed TF-IDF of word
1-2-grams; and the input layouts of the linear, form and style parts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!]+(?:\s|$)")
_DECIMAL = re.compile(r"\d+\.\d+")
_FRACTION = re.compile(r"\d+/\d+")
_CHOICES = re.compile(r"(?:^|\n)\s*A[.)]\s.*\n\s*B[.)]\s", re.S)
_OPS = set("+-*/=^")
FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "log_numbers",
    "log_distinct_numbers",
    "log_sentences",
    "has_decimal",
    "has_percent",
    "has_fraction",
    "log_max_number",
    "has_choices",
    "has_dollar",
    "log_operators",
)
CHOICES_COL = FEATURE_NAMES.index("has_choices")


def prompt_features(prompt: str) -> list[float]:
    """Cheap difficulty features of the prompt text alone (no benchmark name)."""
    numbers = _NUMBER.findall(prompt)
    values = []
    for n in numbers:
        plain = n.replace(",", "")
        if plain.replace(".", "", 1).isdigit():
            values.append(float(plain))
    sentences = [s for s in _SENTENCE_END.split(prompt) if s.strip()]
    return [
        np.log1p(len(prompt)),
        np.log1p(len(prompt.split())),
        np.log1p(len(numbers)),
        np.log1p(len(set(numbers))),
        np.log1p(len(sentences)),
        float(bool(_DECIMAL.search(prompt))),
        float("%" in prompt),
        float(bool(_FRACTION.search(prompt))),
        float(np.log1p(min(max(values), 1e300))) if values else 0.0,
        float(bool(_CHOICES.search(prompt))),
        float("$" in prompt),
        np.log1p(sum(map(prompt.count, _OPS))),  # map, not a generator: a per-prompt hot path
    ]


_STYLE = [
    re.compile(p, re.I)
    for p in (
        r"\b(?:NOT|EXCEPT|LEAST|FALSE)\b",
        r"Statement 1",
        r"which of the following",
        r"\\\w|\$\$|\^\d",
        r"\b(?:calculate|compute|how many|how much|what is the value|find the|solve)\b",
        r"\b(?:True|False)\b",
        r"\b(?:because|therefore|since)\b",
    )
]
STYLE_NAMES = (
    "has_negation",
    "has_statement_pair",
    "has_which_following",
    "has_math_notation",
    "has_computation",
    "has_true_false",
    "has_reasoning_word",
    "log_option_chars",
    "option_digit_share",
    "log_digits",
    "log_capitals",
    "log_lines",
)
_OPTION = re.compile(r"^\s*[A-D][.)]\s")


def style_features(prompt: str) -> list[float]:
    """Question-form features that do not name a topic (see the module docstring)."""
    lines = [ln for ln in prompt.split("\n") if ln.strip()]
    options = [ln for ln in lines if _OPTION.match(ln)]
    return [float(bool(p.search(prompt))) for p in _STYLE] + [
        float(np.log1p(np.mean([len(o) for o in options]))) if options else 0.0,
        float(np.mean([any(map(str.isdigit, o)) for o in options])) if options else 0.0,
        float(np.log1p(sum(map(str.isdigit, prompt)))),
        float(np.log1p(sum(map(str.isupper, prompt)))),
        float(np.log1p(len(lines))),
    ]


def style_matrix(prompts: Sequence[str]) -> np.ndarray:
    return np.asarray([style_features(p) for p in prompts], dtype=np.float64).reshape(len(prompts), len(STYLE_NAMES))


def hashed_counts(prompts: Sequence[str], n_features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    hv = HashingVectorizer(n_features=int(n_features), ngram_range=(1, 2), alternate_sign=False, norm=None)
    x = hv.transform(list(prompts)).tocsr().astype(np.float64)
    x.data = 1.0 + np.log(x.data)  # sublinear term frequency
    return x


def tfidf(x, idf: np.ndarray):
    from sklearn.preprocessing import normalize

    return normalize(x.multiply(idf.reshape(1, -1)).tocsr())


def feature_matrix(prompts: Sequence[str]) -> np.ndarray:
    return np.asarray([prompt_features(p) for p in prompts], dtype=np.float64).reshape(len(prompts), len(FEATURE_NAMES))


def linear_inputs(emb: np.ndarray, feats: np.ndarray) -> np.ndarray:
    return np.hstack([emb.astype(np.float64), feats, feats * feats[:, CHOICES_COL : CHOICES_COL + 1]])


def form_inputs(emb: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """[embedding, embedding x has-choices, text features, text features x has-choices]:
    multiple-choice questions and free-form prompts get their own embedding weights (on
    top of shared ones), so what predicts a hard maths word problem is not averaged with
    what predicts a hard multiple-choice question."""
    choices = feats[:, CHOICES_COL : CHOICES_COL + 1]
    emb = emb.astype(np.float64)
    return np.hstack([emb, emb * choices, feats, feats * choices])


def style_inputs(prompts: Sequence[str], feats: np.ndarray, style: np.ndarray | None = None) -> np.ndarray:
    """[text features, style features x has-choices]: the question-form features speak
    about multiple-choice questions only, so free-form prompts (chat, writing) are judged
    on the plain text features alone."""
    style = style_matrix(prompts) if style is None else style
    return np.hstack([feats, style * feats[:, CHOICES_COL : CHOICES_COL + 1]])
