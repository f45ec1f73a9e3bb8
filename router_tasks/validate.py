"""Validate: a Great Expectations 1.x suite on the labels table; bad data stops the run.

The validated table is written again as this stage's output so training can only ever
read labels that passed (its key depends on this stage's fingerprint, not the raw one).
GX is imported inside the function: importing it costs seconds, which the DAG parser
and the CLI should not pay.
"""

from __future__ import annotations

import logging

import pandas as pd

from router_tasks.stage import run_stage
from router_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "validate"
STAGE_VERSION = "1"


class DataQualityError(RuntimeError):
    """A table failed its expectation suite; the message names each failed rule."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


def labels_expectations(required_models: list[str]):
    import great_expectations as gx

    E = gx.expectations
    exps = [
        E.ExpectTableColumnsToMatchSet(
            column_set=["prompt_id", "prompt", "model", "score", "correct", "quality", "source", "benchmark"],
            exact_match=True,
        ),
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="prompt_id"),
        E.ExpectColumnValuesToNotBeNull(column="prompt"),
        E.ExpectColumnValuesToNotBeNull(column="model"),
        E.ExpectColumnValuesToNotBeNull(column="quality"),
        E.ExpectColumnValuesToBeBetween(column="quality", min_value=0.0, max_value=1.0),
        E.ExpectColumnValuesToBeInSet(column="score", value_set=[1, 2, 3, 4, 5]),  # nulls pass
        E.ExpectCompoundColumnsToBeUnique(column_list=["prompt_id", "model", "source"]),
    ]
    if required_models:
        exps.append(E.ExpectColumnDistinctValuesToContainSet(column="model", value_set=list(required_models)))
    return exps


def run_suite(df: pd.DataFrame, name: str, expectations) -> list[dict]:
    """Run an expectation suite on `df` with an ephemeral GX context; return the failures."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(f"{name}_asset")
        .add_batch_definition_whole_dataframe(f"{name}_batch")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=list(expectations)))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite))
    result = vd.run(batch_parameters={"dataframe": df})
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        failures.append(
            {
                "rule": cfg.type,
                "kwargs": {k: v for k, v in cfg.kwargs.items() if k != "batch_id"},
                "observed": res.get("observed_value"),
                "unexpected_count": res.get("unexpected_count"),
                "unexpected_sample": (res.get("partial_unexpected_list") or [])[:5],
                "exception": (r.exception_info or {}).get("exception_message") if r.exception_info else None,
            }
        )
    return failures


def check_rows_per_model(df: pd.DataFrame, min_rows: int) -> list[dict]:
    counts = df.groupby("model").size()
    low = counts[counts < min_rows]
    return [
        {"rule": "rows_per_model_at_least", "kwargs": {"model": m, "min_value": min_rows}, "observed": int(n)}
        for m, n in low.items()
    ]


def format_failures(table: str, failures: list[dict]) -> str:
    lines = [f"data-quality check failed on {table}: {len(failures)} rule(s) broken"]
    for f in failures:
        detail = f"observed={f.get('observed')!r}"
        if f.get("unexpected_count"):
            detail += f", unexpected_count={f['unexpected_count']}, e.g. {f['unexpected_sample']}"
        if f.get("exception"):
            detail += f", error={f['exception']}"
        lines.append(f"  - {f['rule']} {f['kwargs']}: {detail}")
    return "\n".join(lines)


def validate_labels(
    labels: dict,
    *,
    required_models: list[str] | None = None,
    min_rows_per_model: int = 5,
    artifact_root: str | None = None,
) -> dict:
    store = ArtifactStore(artifact_root)
    config = {"required_models": sorted(required_models or []), "min_rows_per_model": min_rows_per_model}

    def compute(ctx):
        df = ctx.read_input("labels")
        failures = run_suite(df, "labels", labels_expectations(config["required_models"]))
        failures += check_rows_per_model(df, min_rows_per_model)
        if failures:
            raise DataQualityError(format_failures(f"labels {ctx.inputs['labels'].uri}", failures), failures)
        log.info("labels passed %d expectations on %d rows", len(labels_expectations(config["required_models"])) + 1, len(df))
        ctx.stats["rules_checked"] = len(labels_expectations(config["required_models"])) + 1
        ctx.write_table(df)

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"labels": labels}, config=config, store=store)
