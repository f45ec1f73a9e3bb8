"""Build labels: one table of (prompt, model, score or correctness, quality) for training.

Sources, each tagged in `source`:
- the pipeline's own judgements (generate + judge on the ingested prompts);
- optionally the bundled RouteLLM per-prompt results (MMLU + GSM8K, evaluation holdout
  and contaminated prompts removed), so a router for the gpt-4 / Mixtral pair can be
  trained offline.

Judgements without a usable verdict (failure_reason set) are not labels; they are counted
in the manifest stats so a rising failure rate is visible.

`strong_quality` says how the strong model's quality is known: "labeled" (it is one of
the endpoints, answered and judged like the others) or "assume_perfect" (it is never
called for labels: every own prompt gets a 5/5 row for it, source "assumed:<name>"; its
answer is what the references stage wrote as the reference).

`own_eval_plan` decides how a run's own labels are evaluated on prompts the router never
trained on; the train stage applies it, the evaluate stage scores it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from router_tasks.core.prompts import prompt_id
from router_tasks.core.schemas import (
    JUDGE_LABEL_COLUMNS,
    LABEL_COLUMNS,
    OWN_SOURCE_PREFIXES,
    check_strong_quality,
    is_own_source,
)
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import zeroeval
from router_tasks.data.routellm import HOLDOUT_VERSION, is_eval_holdout, routellm_training_labels
from router_tasks.data.table_files import read_table_file

log = logging.getLogger(__name__)

STAGE = "labels"
STAGE_VERSION = "4"  # 2: strong_quality; 3: the prompts' category, when they have one; 4: judge columns, agreement
AGREEMENT_FILE = "judge_agreement.json"
AGREEMENT_FILE_IN = "agreement.json"  # the judge_agreement stage's report (labeling.agreement.REPORT_FILE)

#: Own-labels evaluation. With at least this many prompts labelled for both the strong and
#: the weak model, a fixed hash holdout (the RouteLLM split's salt and fraction, by prompt
#: id: the same prompt is held out in every run, so routers trained on different label sets
#: can be compared on it) is big enough to score; below it the held-out share would be a
#: handful of prompts, so every prompt is scored by k-fold cross-fit instead (retraining
#: the router's recipe k times, which is cheap exactly when labels are few).
OWN_HOLDOUT_MIN_PROMPTS = 150
OWN_CROSSFIT_FOLDS = 5


def quality_of(score: pd.Series, correct: pd.Series) -> pd.Series:
    """Quality in [0, 1]: correctness as 0/1, a 1-5 score as (score - 1) / 4."""
    from_score = (score.astype("Float64") - 1.0) / 4.0
    from_correct = correct.astype("Float64")
    return from_correct.fillna(from_score).astype("Float64")


def judgements_to_labels(prompts: pd.DataFrame, judged: pd.DataFrame, source: str) -> pd.DataFrame:
    usable = judged[judged["failure_reason"].isna()]
    cols = ["prompt_id", "prompt", "dataset"] + (["category"] if _has_category(prompts) else [])
    merged = usable.merge(prompts[cols], on="prompt_id", how="left", validate="many_to_one")
    missing = merged["prompt"].isna()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} judgements name prompt ids absent from the prompt table, "
            f"e.g. {merged.loc[missing, 'prompt_id'].iloc[0]}"
        )
    out = pd.DataFrame(
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
    if "category" in merged:
        out["category"] = merged["category"].astype("string")
    for col in JUDGE_LABEL_COLUMNS:  # where the judge read a verdict (not exact match, not older judgements)
        if col in merged and merged[col].notna().any():
            out[col] = merged[col].astype("Float64")
    return out


def _has_category(prompts: pd.DataFrame) -> bool:
    """Whether the team's prompt table tags its prompts with a category (kind of traffic)."""
    return "category" in prompts and bool(prompts["category"].notna().any())


def own_eval_plan(labels: pd.DataFrame, strong_model: str, weak_model: str) -> dict:
    """How the run's own labels in `labels` are evaluated for the strong/weak pair.

    {"protocol": "holdout" | "crossfit" | None, "n_pair_prompts", "heldout": sorted prompt
    ids the router must not train on (holdout only), "folds", "reason" (protocol None)}.
    """

    own = labels[is_own_source(labels["source"]) & labels["quality"].notna()]
    labelled = own.groupby(["prompt_id", "model"]).size().unstack("model")
    if {strong_model, weak_model} <= set(labelled.columns):
        both = labelled[strong_model].notna() & labelled[weak_model].notna()
        pair = sorted(str(p) for p in labelled.index[both])
    else:
        pair = []
    plan: dict = {
        "n_pair_prompts": len(pair),
        "strong_model": strong_model,
        "weak_model": weak_model,
        "heldout": [],
        "folds": None,
        "split": HOLDOUT_VERSION,
    }
    if len(pair) >= OWN_HOLDOUT_MIN_PROMPTS:
        heldout = sorted({str(p) for p in own["prompt_id"] if is_eval_holdout(str(p))})
        return {
            **plan,
            "protocol": "holdout",
            "heldout": heldout,
            "why": f"{len(pair)} prompts labelled for both models (>= {OWN_HOLDOUT_MIN_PROMPTS}): fixed hash holdout",
        }
    if len(pair) >= 2 * OWN_CROSSFIT_FOLDS:
        return {
            **plan,
            "protocol": "crossfit",
            "folds": OWN_CROSSFIT_FOLDS,
            "why": f"{len(pair)} prompts labelled for both models (< {OWN_HOLDOUT_MIN_PROMPTS}): "
            f"{OWN_CROSSFIT_FOLDS}-fold cross-fit by prompt",
        }
    have = sorted(set(own["model"]))
    return {
        **plan,
        "protocol": None,
        "reason": f"own labels have {len(pair)} prompts labelled for both {strong_model} and {weak_model} "
        f"(need >= {2 * OWN_CROSSFIT_FOLDS}; own labels cover models {have})",
    }


def assumed_strong_labels(prompts: pd.DataFrame, strong_model: str, source_name: str) -> pd.DataFrame:
    """`strong_quality: assume_perfect`: a 5/5 row for the strong model on every prompt."""
    n = len(prompts)
    return pd.DataFrame(
        {
            "prompt_id": prompts["prompt_id"].astype(str).to_numpy(),
            "prompt": prompts["prompt"].astype(str).to_numpy(),
            "model": strong_model,
            "score": pd.array([5] * n, dtype="Int64"),
            "correct": pd.array([pd.NA] * n, dtype="boolean"),
            "quality": pd.array([1.0] * n, dtype="Float64"),
            "source": f"{OWN_SOURCE_PREFIXES[1]}{source_name}",
            "benchmark": prompts["dataset"].astype("string").to_numpy() if "dataset" in prompts else pd.NA,
        }
        | ({"category": prompts["category"].astype("string").to_numpy()} if _has_category(prompts) else {})
    )


def build_labels(
    prompts: dict,
    judgements: dict,
    agreement: dict | None = None,
    *,
    include_routellm: bool = True,
    routellm_models: list[str] | None = None,
    routellm_max_prompts: int | None = None,
    source_name: str = "generated",
    strong_quality: str = "labeled",
    strong_model: str | None = None,
    feedback: dict | None = None,
    artifact_root: str | None = None,
) -> dict:
    """The labels table of a run; `feedback` (a labels-shaped artifact of user ratings, e.g.
    `serving.feedback.feedback_labels_stage`) adds its rows beside the judge's."""
    store = ArtifactStore(artifact_root)
    check_strong_quality(strong_quality)
    if strong_quality == "assume_perfect" and not strong_model:
        raise ValueError("strong_quality 'assume_perfect' needs strong_model: the model that counts as 5/5")
    config = {
        "strong_quality": strong_quality,
        "strong_model": strong_model if strong_quality == "assume_perfect" else None,
        "include_routellm": include_routellm,
        "routellm_models": routellm_models,
        "routellm_max_prompts": routellm_max_prompts,
        "source_name": source_name,
    }

    def compute(ctx):
        judged = ctx.read_input("judgements")
        own = judgements_to_labels(ctx.read_input("prompts"), judged, f"generated:{source_name}")
        if agreement is not None:  # how far to trust the judge, beside the labels it made
            report = ctx.store.read_bytes(f"{ctx.inputs['agreement'].key}/{AGREEMENT_FILE_IN}")
            ctx.write_file(AGREEMENT_FILE, report)
            ctx.stats["judge_agreement"] = ctx.input_manifest("agreement")["stats"].get("agreement")
        if strong_quality == "assume_perfect":
            # its judged rows (if it was also listed as an endpoint) give way to the assumption
            if (own["model"] == strong_model).any():
                log.warning(
                    "strong_quality is assume_perfect but %s was also labelled (%d rows): those calls "
                    "were not needed; leave it out of `models`",
                    strong_model,
                    int((own["model"] == strong_model).sum()),
                )
            own = own[own["model"] != strong_model]
            own = pd.concat(
                [own, assumed_strong_labels(ctx.read_input("prompts"), strong_model, source_name)], ignore_index=True
            )
        parts = [own]
        if feedback is not None:
            parts.append(ctx.read_input("feedback"))
        if include_routellm:
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
        keep = LABEL_COLUMNS + [c for c in ["category", *JUDGE_LABEL_COLUMNS] if c in own]
        labels = pd.concat(parts, ignore_index=True)[keep]
        labels = labels.drop_duplicates(["prompt_id", "model", "source"], keep="first").reset_index(drop=True)
        ctx.stats.update(
            judgements_in=len(judged),
            judgements_without_verdict=int(judged["failure_reason"].notna().sum()),
            rows_by_source=labels.groupby("source").size().to_dict(),
            rows_by_model=labels.groupby("model").size().to_dict(),
            strong_quality=strong_quality,
        )
        ctx.write_table(labels)

    inputs = {"prompts": prompts, "judgements": judgements, "feedback": feedback}
    inputs |= {"agreement": agreement} if agreement else {}
    return run_stage(STAGE, STAGE_VERSION, compute, inputs=inputs, config=config, store=store)


# --------------------------------------------------------------------------------------
# labels from a user's file, and from the bundled ZeroEval results
# --------------------------------------------------------------------------------------
FILE_STAGE = "labels_file"
FILE_STAGE_VERSION = "1"
ZEROEVAL_STAGE = "labels_zeroeval"
ZEROEVAL_STAGE_VERSION = "1"
TOKEN_COLUMNS = ["output_tokens", "input_tokens"]


def _number(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.astype("string").str.strip().replace({"": None}), errors="coerce")


def labels_from_table(df: pd.DataFrame, source: str = "file", where: str = "labels") -> pd.DataFrame:
    """A labels table (LABEL_COLUMNS, plus output_tokens/input_tokens if given) from a
    user's table with `prompt`, `model` and one of `quality` in [0, 1], `correct` (0/1,
    true/false) or `score` (1-5); optional `prompt_id`, `benchmark`, token counts.

    A value that does not parse becomes null, so the validate stage quarantines that row
    (naming the rule) instead of failing the file; a missing column raises here.
    """
    missing = [c for c in ("prompt", "model") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: no column(s) {missing}; a labels file needs prompt, model and one of "
            f"quality (0-1), correct (0/1) or score (1-5); it has {list(df.columns)}"
        )
    if not {"quality", "correct", "score"} & set(df.columns):
        raise ValueError(
            f"{where}: needs one of the columns quality (0-1), correct (0/1) or score (1-5); it has {list(df.columns)}"
        )
    n = len(df)
    prompt = df["prompt"].astype("string")
    score = _number(df["score"]) if "score" in df.columns else pd.Series([np.nan] * n, index=df.index)
    score = score.where(score.isin([1, 2, 3, 4, 5]) | score.isna(), np.nan)
    if "correct" in df.columns:
        text = df["correct"].astype("string").str.strip().str.lower()
        correct = text.map({"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False})
        correct = correct.astype("boolean")
    else:
        correct = pd.Series([pd.NA] * n, index=df.index, dtype="boolean")
    quality = _number(df["quality"]) if "quality" in df.columns else pd.Series([np.nan] * n, index=df.index)
    derived = quality_of(score.astype("Float64").round().astype("Int64"), correct)
    quality = quality.astype("Float64").fillna(derived)
    pid = (
        df["prompt_id"].astype("string")
        if "prompt_id" in df.columns
        else prompt.map(lambda p: prompt_id(p) if isinstance(p, str) and p.strip() else None).astype("string")
    )
    out = pd.DataFrame(
        {
            "prompt_id": pid,
            "prompt": prompt,
            "model": df["model"].astype("string"),
            "score": score.round().astype("Int64"),
            "correct": correct,
            "quality": quality,
            "source": source,
            "benchmark": df["benchmark"].astype("string") if "benchmark" in df.columns else pd.NA,
        }
    )
    out["benchmark"] = out["benchmark"].astype("string")
    for col in TOKEN_COLUMNS:
        if col in df.columns:
            out[col] = _number(df[col]).astype("Float64")
    return out.reset_index(drop=True)


def labels_from_file(path: str, *, source: str | None = None, artifact_root: str | None = None) -> dict:
    """A labels artifact from a parquet/csv/jsonl file (see `labels_from_table`); its key
    depends on the file's bytes, so the same file is imported once."""
    import hashlib
    from pathlib import Path

    data = Path(path).read_bytes() if "://" not in str(path) else None
    df = read_table_file(path, what="labels")
    digest = (
        hashlib.sha256(data).hexdigest()
        if data is not None
        else hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()
    )
    src = source or f"file:{Path(str(path)).name}"

    def compute(ctx):
        labels = labels_from_table(df, src, where=str(path))
        ctx.stats.update(rows_in=len(df), rows_by_model=labels.groupby("model").size().to_dict())
        ctx.write_table(labels)

    return run_stage(
        FILE_STAGE,
        FILE_STAGE_VERSION,
        compute,
        config={"sha256": digest, "source": src},
        store=ArtifactStore(artifact_root),
    )


def zeroeval_labels(
    task: str, *, models: list[str] | None = None, prompt_ids: list[str] | None = None, artifact_root: str | None = None
) -> dict:
    """A labels artifact from the bundled ZeroEval results of `task` ("gsm"/"crux" or
    "zeroeval-gsm8k"/"zeroeval-crux"), optionally only `models` and `prompt_ids`."""

    def compute(ctx):
        labels = zeroeval.labels(task, models=models)
        if prompt_ids is not None:
            labels = labels[labels["prompt_id"].isin(set(prompt_ids))]
        ctx.stats.update(rows_by_model=labels.groupby("model").size().to_dict())
        ctx.write_table(labels.reset_index(drop=True))

    config = {
        "task": task,
        "models": sorted(models) if models else None,
        "prompt_ids": sorted(prompt_ids) if prompt_ids is not None else None,
        "data": zeroeval.data_fingerprint(),
    }
    return run_stage(ZEROEVAL_STAGE, ZEROEVAL_STAGE_VERSION, compute, config=config, store=ArtifactStore(artifact_root))
