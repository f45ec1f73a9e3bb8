"""Builders of small tables the tests share (import them: `from factories import labels_table`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


def labels_table(
    prompts: Iterable[str],
    outcome: Callable[[int, str], Mapping[str, bool]],
    *,
    source: str = "test",
    benchmark: str | None = None,
):
    """A labels table as the labels stage writes it (prompt_id, prompt, model, score, correct,
    quality, source, benchmark): one row per prompt and model, in that order.

    `outcome(i, prompt)` gives `{model: right}` for the i-th prompt; a right answer has
    quality 1.0, a wrong one 0.0; no 1-5 scores (an all-NA Int64 column)."""
    import pandas as pd

    from router_tasks.core.prompts import prompt_id

    rows = [
        dict(
            prompt_id=prompt_id(text),
            prompt=text,
            model=model,
            score=None,
            correct=ok,
            quality=float(ok),
            source=source,
            benchmark=benchmark,
        )
        for i, text in enumerate(prompts)
        for model, ok in outcome(i, text).items()
    ]
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    return df
