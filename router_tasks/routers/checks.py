"""What every router checks on its inputs: the labels table and the params.

Apart from `common` (the embedding routers' base) so that routers that do not embed (the
causal-LLM classifier) depend on these alone.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from router_tasks.core.schemas import ROUTER_LABEL_COLUMNS as LABEL_COLUMNS


def check_labels(labels: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Labels rows usable for training: required columns present, quality in [0, 1].

    Rows whose quality is null (a failed judgement) carry no signal and are dropped;
    anything else out of range is an upstream bug and raises, naming the row.
    """
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table lacks column(s) {missing}; has {list(labels.columns)}")
    df = labels.loc[labels["quality"].notna(), list(LABEL_COLUMNS)].copy()
    df["quality"] = df["quality"].astype(float)
    bad = df[(df["quality"] < 0) | (df["quality"] > 1)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"labels row {bad.index[0]} (prompt_id={row['prompt_id']}, model={row['model']}): "
            f"quality {row['quality']} is outside [0, 1]"
        )
    for col in ("prompt_id", "prompt", "model"):
        nulls = df[df[col].isna()]
        if len(nulls):
            raise ValueError(f"labels row {nulls.index[0]}: {col} is null")
    if models is not None:
        df = df[df["model"].isin(list(models))]
    return df


def resolve_params(router_cls, params: dict | None) -> dict:
    """`router_cls.DEFAULT_PARAMS` overlaid with `params`; unknown names raise.

    The train stage puts the resolved dict in its config, so changing a default in code
    changes the artifact key instead of silently reusing a router trained the old way.
    """
    defaults = dict(getattr(router_cls, "DEFAULT_PARAMS", {}))
    unknown = set(params or {}) - set(defaults)
    if unknown:
        raise ValueError(
            f"{router_cls.kind} router: unknown param(s) {sorted(unknown)}; known: {sorted(defaults)}"
        )
    return {**defaults, **(params or {})}
