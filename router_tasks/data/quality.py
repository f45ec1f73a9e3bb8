"""Data quality: one Great Expectations 1.x suite per artifact kind, quarantine, Data Docs.

Each suite splits its rules in two:
- *row rules*: a row that breaks one is set aside in a quarantine table beside the stage
  output (`quarantine.parquet`: the row, the rules it broke, the stage) and the stage
  goes on with the rest, as long as the kept share stays at or above `min_kept_share`;
- *table rules*: the whole table is wrong (missing column, duplicate keys, a failure rate
  over its threshold, a degenerate label distribution): the stage stops with a
  `DataQualityError` naming each rule and the observed numbers.

Every validation also renders GX's Data Docs page for its result (the Data Docs
`ValidationResultsPageRenderer`, one self-contained HTML page: an ephemeral GX context has
no Data Docs site to build, and the artifact store, not a GX project folder, is where run
outputs live). The page lands at `quality/<kind>.html` inside the stage's artifact and its
URI in the manifest stats (`stats.quality.<kind>.data_docs`), so the run summary and the
failure alert can link it. A failing validation writes its page too (the artifact stays
incomplete, without a manifest, so nothing downstream takes it for data).

Thresholds come from `DEFAULT_THRESHOLDS`, overridden by the JSON object in the
environment variable `TELA_DQ_THRESHOLDS`, overridden by the `thresholds` a stage is
given. Stages put the resolved values in their config, so changing one re-validates.

GX is imported inside functions: importing it costs seconds that the DAG parser and the
CLI's quick commands should not pay.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from router_tasks.data.quality_suites import Suite

log = logging.getLogger(__name__)

THRESHOLDS_ENV = "TELA_DQ_THRESHOLDS"
QUARANTINE_TABLE = "quarantine.parquet"

DEFAULT_THRESHOLDS: dict[str, Any] = {
    # share of rows that must survive row rules for a stage to go on
    "min_kept_share": 0.95,
    # prompts: length bounds after whitespace normalisation (ingest's own hard limit,
    # max_prompt_chars, stops absurd files; this one sets overlong prompts aside)
    "min_prompt_chars": 1,
    "max_prompt_chars": 32_000,
    # answers: share of (prompt, model) calls that may end in an error
    "max_answer_error_rate": 0.5,
    # judgements: share with any failure reason / share of LLM-judge verdicts that failed
    # to parse. Lenient by default: the offline demo judges with a 135M model.
    "max_judge_failure_rate": 0.95,
    "max_parse_failure_rate": 0.95,
    # labels: no single quality value may hold more than this share of the rows
    "max_class_share": 0.98,
    "min_rows_per_model": 5,
    # judge agreement with exact match (`labeling.agreement`), on at least `min_agreement_rows`
    # sampled verdicts: accuracy of "verdict >= 4 means correct", and Cohen's kappa. Off by
    # default (0 and -1): a team sets the bar its labels must clear.
    "min_judge_agreement": 0.0,
    "min_judge_kappa": -1.0,
    "min_agreement_rows": 10,
}


class DataQualityError(RuntimeError):
    """A table failed its expectation suite; the message names each failed rule and the
    numbers. `failures` is a list of dicts (rule, kwargs, observed, unexpected_count,
    unexpected_sample); `data_docs` the URI of the rendered report, when there is one."""

    def __init__(
        self,
        message: str,
        failures: list[dict],
        *,
        data_docs: str | None = None,
        stage: str | None = None,
        kind: str | None = None,
    ):
        super().__init__(message)
        self.failures = failures
        self.data_docs = data_docs
        self.stage = stage
        self.kind = kind


def resolve_thresholds(overrides: Mapping | None = None) -> dict:
    """Defaults < `$TELA_DQ_THRESHOLDS` (JSON object) < `overrides`; unknown names refused."""
    out = dict(DEFAULT_THRESHOLDS)
    layers = []
    env = os.environ.get(THRESHOLDS_ENV)
    if env:
        try:
            layers.append((THRESHOLDS_ENV, json.loads(env)))
        except json.JSONDecodeError as err:
            raise ValueError(f"{THRESHOLDS_ENV} is not a JSON object: {err}") from None
    if overrides:
        layers.append(("thresholds", dict(overrides)))
    for where, layer in layers:
        if not isinstance(layer, dict):
            raise ValueError(f"{where}: expected a JSON object of thresholds, got {layer!r:.100}")
        unknown = set(layer) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise ValueError(
                f"{where}: unknown data-quality thresholds {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}"
            )
        out.update(layer)
    return out


# --- running a suite ----------------------------------------------------------------


@dataclass
class QualityResult:
    kind: str
    stage: str
    rows_in: int
    kept: pd.DataFrame
    quarantine: pd.DataFrame  # the rows set aside + dq_rules, dq_stage, dq_row
    failures: list[dict]  # table-level: non-empty means the table must not be used
    row_rules: dict[str, int]  # rule -> rows that broke it
    row_rule_types: dict[str, str]  # rule -> GX expectation type
    rules_checked: int
    html: str

    @property
    def kept_share(self) -> float:
        return len(self.kept) / self.rows_in if self.rows_in else 1.0

    def summary(self) -> dict:
        return {
            "suite": self.kind,
            "rules_checked": self.rules_checked,
            "rows_checked": self.rows_in,
            "rows_kept": len(self.kept),
            "rows_quarantined": len(self.quarantine),
            "kept_share": round(self.kept_share, 6),
            "row_rules_broken": self.row_rules,
            "table_rules_broken": [f["rule"] for f in self.failures],
        }


def _rule_of(r) -> str:
    cfg = r.expectation_config
    return (cfg.meta or {}).get("rule") or cfg.type


def _failure(r) -> dict:
    cfg = r.expectation_config
    res = r.result or {}
    observed = res.get("observed_value")
    if observed is None and res.get("unexpected_percent") is not None:
        observed = f"{res['unexpected_percent']:.2f}% unexpected"
    return {
        "rule": _rule_of(r),
        "expectation": cfg.type,
        "kwargs": {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)},
        "observed": observed,
        "element_count": res.get("element_count"),
        "unexpected_count": res.get("unexpected_count"),
        "unexpected_percent": res.get("unexpected_percent"),
        "unexpected_sample": [_plain(v) for v in (res.get("partial_unexpected_list") or [])[:5]],
        "exception": _exception_message(r),
    }


def _exception_message(r) -> str | None:
    info = r.exception_info or {}
    if info.get("exception_message"):
        return info["exception_message"]
    msgs = [v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("exception_message")]
    return msgs[0] if msgs else None


def _raised(r) -> bool:
    info = r.exception_info or {}
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _plain(v):
    """JSON-able, short: failures travel into alerts and logs."""
    if isinstance(v, str):
        return v[:200]
    if isinstance(v, (int, float, bool)) or v is None:
        return v
    return str(v)[:200]


def _render_html(result) -> str:
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    # COMPLETE results carry every unexpected index: keep the page small.
    for r in result.results:
        for k in ("unexpected_index_list", "unexpected_list"):
            if isinstance((r.result or {}).get(k), list):
                r.result[k] = r.result[k][:20]
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def run_suite(df: pd.DataFrame, suite: Suite, *, stage: str) -> QualityResult:
    """Validate `df` against `suite` in an ephemeral GX context; nothing is written."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = df.reset_index(drop=True)
    bad: dict[int, list[str]] = {}
    row_rules: dict[str, int] = {}
    for col in suite.utf8_columns:
        if col in frame.columns and frame[col].dtype == object:  # Arrow-backed strings are valid by construction
            broken = [
                i for i, v in zip(frame.index, frame[col], strict=False) if isinstance(v, str) and not _encodes(v)
            ]
            if broken:
                row_rules[f"{col}_valid_utf8"] = len(broken)
                for i in broken:
                    bad.setdefault(int(i), []).append(f"{col}_valid_utf8")
    frame = frame.drop(index=list(bad))
    if suite.derive is not None:
        frame = suite.derive(frame)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    name = f"{stage}_{suite.kind}"
    batch_def = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(f"{name}_asset")
        .add_batch_definition_whole_dataframe(f"{name}_batch")
    )
    gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=[*suite.table, *suite.row]))
    vd = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=gx_suite)
    )
    # COMPLETE: row rules need the index of every unexpected row to quarantine it.
    result = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})

    row_rule_names = {(e.meta or {}).get("rule") for e in suite.row}
    failures = []
    for r in result.results:
        if r.success:
            continue
        rule = _rule_of(r)
        indices = (r.result or {}).get("unexpected_index_list")
        if rule in row_rule_names and not _raised(r) and indices is not None:
            row_rules[rule] = len(indices)
            for i in indices:
                bad.setdefault(int(i), []).append(rule)
        else:
            failures.append(_failure(r))
    for check in suite.checks:
        failures += check(frame)

    whole = df.reset_index(drop=True)
    mask = whole.index.isin(list(bad))
    kept = whole[~mask].reset_index(drop=True)
    quarantine = whole[mask].copy()
    quarantine["dq_rules"] = ["; ".join(bad[i]) for i in quarantine.index]
    quarantine["dq_stage"] = stage
    quarantine["dq_row"] = quarantine.index.astype("int64")
    return QualityResult(
        kind=suite.kind,
        stage=stage,
        rows_in=len(df),
        kept=kept,
        quarantine=quarantine.reset_index(drop=True),
        failures=failures,
        row_rules=row_rules,
        row_rule_types={
            **{(e.meta or {}).get("rule"): e.expectation_type for e in suite.row},
            **{f"{c}_valid_utf8": "utf8_encodable" for c in suite.utf8_columns},
        },
        rules_checked=len(suite),
        html=_render_html(result),
    )


def format_failures(table: str, failures: list[dict], data_docs: str | None = None) -> str:
    lines = [f"data-quality check failed on {table}: {len(failures)} rule(s) broken"]
    for f in failures:
        detail = f"observed={f.get('observed')!r}"
        if f.get("unexpected_count"):
            detail += f", unexpected_count={f['unexpected_count']}"
            if f.get("unexpected_sample"):
                detail += f", e.g. {f['unexpected_sample']}"
        if f.get("exception"):
            detail += f", error={f['exception']}"
        kwargs = {k: v for k, v in (f.get("kwargs") or {}).items() if k not in ("result_format",)}
        exp = f" ({f['expectation']})" if f.get("expectation") and f["expectation"] != f["rule"] else ""
        lines.append(f"  - {f['rule']}{exp} {kwargs}: {detail}")
    if data_docs:
        lines.append(f"Data Docs: {data_docs}")
    return "\n".join(lines)


def _printable(df: pd.DataFrame) -> pd.DataFrame:
    """Quarantined rows can hold text that is not valid UTF-8 (lone surrogates), which
    Parquet refuses: escape it so the row is kept, readable, for inspection."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or str(out[c].dtype).startswith("string"):
            out[c] = (
                out[c]
                .map(lambda v: v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v)
                .astype(out[c].dtype if out[c].dtype != object else object)
            )
    return out


def failure_report_prefix(artifact_key: str) -> str:
    """Where a failed validation's Data Docs and quarantine go: outside `stages/`, so a
    failed stage leaves no half artifact there (`stages/x/<digest>` -> `quality/x/<digest>`)."""
    return "quality/" + artifact_key.removeprefix("stages/")


def enforce(
    ctx, df: pd.DataFrame, suite: Suite, *, min_kept_share: float, quarantine_file: str = QUARANTINE_TABLE
) -> pd.DataFrame:
    """Validate `df` inside a stage's compute; return the rows to keep.

    On success writes `quality/<kind>.html` (Data Docs) and, when rows were set aside,
    the quarantine table into the stage's artifact, and records both in
    `ctx.stats["quality"][kind]` (the manifest). On failure (a table rule broken, or the
    kept share under `min_kept_share`, which then names the row rules that removed rows
    too) writes the same two files under `quality/<stage>/<digest>/` instead, nothing
    under `stages/`, and raises DataQualityError carrying the failures and the link.
    """
    res = run_suite(df, suite, stage=ctx.stage)
    failures = list(res.failures)
    if res.rows_in and res.kept_share < min_kept_share:
        failures.insert(
            0,
            {
                "rule": "kept_share_at_least",
                "kwargs": {"min_value": min_kept_share},
                "observed": round(res.kept_share, 4),
                "unexpected_count": len(res.quarantine),
                "unexpected_sample": [],
            },
        )
        for rule, n in res.row_rules.items():
            rows = res.quarantine.loc[
                res.quarantine["dq_rules"].str.split("; ").map(lambda rs, rule=rule: rule in rs), "dq_row"
            ]
            failures.append(
                {
                    "rule": rule,
                    "expectation": res.row_rule_types.get(rule),
                    "kwargs": {"level": "row"},
                    "observed": f"{n} of {res.rows_in} rows",
                    "unexpected_count": n,
                    "unexpected_sample": [f"row {int(i)}" for i in rows[:5]],
                }
            )

    docs_file = f"quality/{suite.kind}.html"
    if failures:
        prefix = failure_report_prefix(ctx.key)
        ctx.store.write_bytes(f"{prefix}/{suite.kind}.html", res.html.encode("utf-8"))
        docs_uri = ctx.store.uri(f"{prefix}/{suite.kind}.html")
        if len(res.quarantine):
            ctx.store.write_parquet(f"{prefix}/{quarantine_file}", _printable(res.quarantine))
        raise DataQualityError(
            format_failures(f"{suite.kind} in stage {ctx.stage} ({ctx.uri()})", failures, docs_uri),
            failures,
            data_docs=docs_uri,
            stage=ctx.stage,
            kind=suite.kind,
        )

    ctx.write_file(docs_file, res.html.encode("utf-8"))
    docs_uri = ctx.uri(docs_file)
    info = {**res.summary(), "data_docs": docs_uri, "quarantine": None, "min_kept_share": min_kept_share}
    if len(res.quarantine):
        ctx.write_table(_printable(res.quarantine), quarantine_file)
        info["quarantine"] = ctx.uri(quarantine_file)
        log.warning(
            "%s: %d of %d %s rows quarantined (%s) -> %s",
            ctx.stage,
            len(res.quarantine),
            res.rows_in,
            suite.kind,
            res.row_rules,
            info["quarantine"],
        )
    ctx.stats.setdefault("quality", {})[suite.kind] = info
    ctx.stats["data_docs"] = docs_uri  # flat, for the run summary's link
    return res.kept
