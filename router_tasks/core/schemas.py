"""The shapes the stages agree on: table columns, well-known keys, cell helpers.

One place for what several packages read and write, so a column or key renamed here is
renamed everywhere (every other module imports these names instead of repeating them).
"""

from __future__ import annotations

import math

import pandas as pd

#: the labels table (labels stage -> validate -> train, cross-fit folds)
LABEL_COLUMNS = ["prompt_id", "prompt", "model", "score", "correct", "quality", "source", "benchmark"]
#: columns a labels table may add: token counts (for learning each model's reply cost) and
#: the prompt's `category` from the team's prompt file (its kind of traffic: the group the
#: own-labels evaluation leaves out, `evaluation.own_labels.evaluate_own_left_out`)
TOKEN_LABEL_COLUMNS = ["output_tokens", "input_tokens"]
#: the LLM judge's details on a label, where it read a verdict (`labeling.judge`): the mean
#: of its 1-5 distribution (`score` is its argmax, or the panel's vote) and, with several
#: judges, the share of them whose score differs from the vote
JUDGE_LABEL_COLUMNS = ["score_expected", "judge_disagreement"]
OPTIONAL_LABEL_COLUMNS = TOKEN_LABEL_COLUMNS + ["category"] + JUDGE_LABEL_COLUMNS
#: what a router needs of the labels table to train
ROUTER_LABEL_COLUMNS = ("prompt_id", "prompt", "model", "quality")

#: `source` prefixes of labels the run made itself (its prompts, its endpoints, its judge,
#: its users' ratings through the gateway), as opposed to the bundled RouteLLM labels
#: ("routellm:<bench>")
OWN_SOURCE_PREFIXES = ("generated:", "assumed:", "feedback:")
#: the benchmark name of a run's own labels in evaluation reports and publish decisions
OWN_BENCHMARK = "own-labels"

#: how the strong model's quality is known: "labeled" (an endpoint, judged like the
#: others) or "assume_perfect" (never called for labels; it counts as 5/5 on every prompt)
STRONG_QUALITY_MODES = ("labeled", "assume_perfect")

#: the champion pointer the publish stage moves and `load_router("champion")` follows
CHAMPION_KEY = "champion/CHAMPION.json"


def is_own_source(source) -> pd.Series | bool:
    """Whether a label's `source` (a value or a Series) is one of the run's own."""
    if isinstance(source, pd.Series):
        return source.astype("string").fillna("").str.startswith(OWN_SOURCE_PREFIXES)
    return isinstance(source, str) and source.startswith(OWN_SOURCE_PREFIXES)


def cell_text(value) -> str | None:
    """A table cell as text; None for null/NaN/NA and blank strings."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def finite_or_none(value):
    """A number for JSON: None for None, NaN and infinities; numpy scalars as Python ones."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_strong_quality(mode: str) -> str:
    if mode not in STRONG_QUALITY_MODES:
        raise ValueError(f"strong_quality must be one of {list(STRONG_QUALITY_MODES)}, got {mode!r}")
    return mode
