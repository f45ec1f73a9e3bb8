"""Validate: the labels suite (`router_tasks.data.quality_suites.labels_suite`) on the labels table;
bad data stops the run, bad rows are set aside.

The kept table is written again as this stage's output so training can only ever read
labels that passed (its key depends on this stage's fingerprint, not the raw one). Rows
that break a row rule go to `quarantine.parquet` beside it; the GX Data Docs page of the
validation is `quality/labels.html`, linked from the manifest stats.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from router_tasks.core.schemas import OPTIONAL_LABEL_COLUMNS
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.labels import AGREEMENT_FILE
from router_tasks.data.quality import DataQualityError, enforce, format_failures, resolve_thresholds  # noqa: F401  (DataQualityError re-exported: callers import it from here)
from router_tasks.data.quality_suites import labels_suite

log = logging.getLogger(__name__)

STAGE = "validate"
STAGE_VERSION = "3"  # 2: quarantine + Data Docs; 3: the judge's agreement carried along


def validate_labels(
    labels: dict,
    *,
    required_models: list[str] | None = None,
    min_rows_per_model: int = 5,
    thresholds: Mapping | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Validate a labels artifact; returns the validated artifact's ref.

    `thresholds` overrides `quality.DEFAULT_THRESHOLDS` (and `$TELA_DQ_THRESHOLDS`), e.g.
    `{"min_kept_share": 0.9, "max_class_share": 0.95}`.
    """
    store = ArtifactStore(artifact_root)
    th = resolve_thresholds({**(thresholds or {}), "min_rows_per_model": min_rows_per_model})
    config = {"required_models": sorted(required_models or []), "thresholds": th}

    def compute(ctx):
        df = ctx.read_input("labels")

        suite = labels_suite(
            th, config["required_models"], optional_columns=[c for c in OPTIONAL_LABEL_COLUMNS if c in df.columns]
        )
        kept = enforce(ctx, df, suite, min_kept_share=float(th["min_kept_share"]))
        ctx.stats["rules_checked"] = len(suite)
        agreement = ctx.input_manifest("labels").get("stats", {}).get("judge_agreement")
        if agreement is not None:  # the judge's agreement with exact match travels with the labels it made
            ctx.stats["judge_agreement"] = agreement
            source = f"{ctx.inputs['labels'].key}/{AGREEMENT_FILE}"
            if ctx.store.exists(source):
                ctx.write_file(AGREEMENT_FILE, ctx.store.read_bytes(source))
        log.info("labels passed %d rules: %d of %d rows kept", len(suite), len(kept), len(df))
        ctx.write_table(kept)

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"labels": labels}, config=config, store=store)
