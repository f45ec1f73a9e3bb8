"""Build labels: one table of (prompt, model, score or correctness, quality) for training.

Sources, each tagged in `source`:
- the pipeline's own judgements (generate + judge on the ingested prompts);
- optionally the bundled RouteLLM per-prompt results (MMLU + GSM8K, evaluation holdout
  and contaminated prompts removed), so a router for the gpt-4 / Mixtral pair can be
  trained offline.

Judgements without a usable verdict (failure_reason set) are not labels; they are counted
in the manifest stats so a rising failure rate is visible.
"""

from __future__ import annotations

import pandas as pd

from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore

STAGE = "labels"
STAGE_VERSION = "1"
LABEL_COLUMNS = ["prompt_id", "prompt", "model", "score", "correct", "quality", "source", "benchmark"]


def quality_of(score: pd.Series, correct: pd.Series) -> pd.Series:
    """Quality in [0, 1]: correctness as 0/1, a 1-5 score as (score - 1) / 4."""
    from_score = (score.astype("Float64") - 1.0) / 4.0
    from_correct = correct.astype("Float64")
    return from_correct.fillna(from_score).astype("Float64")


def judgements_to_labels(prompts: pd.DataFrame, judged: pd.DataFrame, source: str) -> pd.DataFrame:
    usable = judged[judged["failure_reason"].isna()]
    merged = usable.merge(prompts[["prompt_id", "prompt", "dataset"]], on="prompt_id", how="left", validate="many_to_one")
    missing = merged["prompt"].isna()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} judgements name prompt ids absent from the prompt table, "
            f"e.g. {merged.loc[missing, 'prompt_id'].iloc[0]}"
        )
    return pd.DataFrame(
        {
            "prompt_id": merged["prompt_id"],
            "prompt": merged["prompt"],
            "model": merged["model"],
            "score": merged["score"].astype("Int64"),
            "correct": merged["correct"].astype("boolean"),
            "quality": quality_of(merged["score"], merged["correct"]),
            "source": source,
            "benchmark": merged["dataset"].astype("string"),
        }
    )


def build_labels(
    prompts: dict,
    judgements: dict,
    *,
    include_routellm: bool = True,
    routellm_models: list[str] | None = None,
    routellm_max_prompts: int | None = None,
    source_name: str = "generated",
    artifact_root: str | None = None,
) -> dict:
    store = ArtifactStore(artifact_root)
    config = {
        "include_routellm": include_routellm,
        "routellm_models": routellm_models,
        "routellm_max_prompts": routellm_max_prompts,
        "source_name": source_name,
    }

    def compute(ctx):
        judged = ctx.read_input("judgements")
        own = judgements_to_labels(ctx.read_input("prompts"), judged, f"generated:{source_name}")
        parts = [own]
        if include_routellm:
            from router_tasks.data.routellm import routellm_training_labels

            bundled = routellm_training_labels(routellm_models)[LABEL_COLUMNS]
            if routellm_max_prompts is not None:
                # A deterministic subset per benchmark (smallest prompt ids): quick runs, tests.
                keep = (
                    bundled.drop_duplicates("prompt_id")
                    .sort_values("prompt_id")
                    .groupby("benchmark")
                    .head(routellm_max_prompts)["prompt_id"]
                )
                bundled = bundled[bundled["prompt_id"].isin(set(keep))]
            parts.append(bundled)
        labels = pd.concat(parts, ignore_index=True)[LABEL_COLUMNS]
        labels = labels.drop_duplicates(["prompt_id", "model", "source"], keep="first").reset_index(drop=True)
        ctx.stats.update(
            judgements_in=len(judged),
            judgements_without_verdict=int(judged["failure_reason"].notna().sum()),
            rows_by_source=labels.groupby("source").size().to_dict(),
            rows_by_model=labels.groupby("model").size().to_dict(),
        )
        ctx.write_table(labels)

    return run_stage(
        STAGE, STAGE_VERSION, compute, inputs={"prompts": prompts, "judgements": judgements}, config=config, store=store
    )
