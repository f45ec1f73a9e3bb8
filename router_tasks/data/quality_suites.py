"""The data-quality rules of each artifact kind (prompts, answers, judgements, labels,
predictions) as `Suite`s of Great Expectations expectations and plain table checks;
`quality` runs them, quarantines broken rows and renders Data Docs.

GX is imported inside functions: importing it costs seconds that the DAG parser and the
CLI's quick commands should not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from router_tasks.core.schemas import JUDGE_LABEL_COLUMNS, LABEL_COLUMNS, OPTIONAL_LABEL_COLUMNS, TOKEN_LABEL_COLUMNS


@dataclass
class Suite:
    """The rules for one artifact kind. `row` / `table` hold GX expectations; `checks`
    hold table rules GX has no expectation for, as functions df -> list of failures;
    `derive` adds validation-only columns (never written to the output)."""

    kind: str
    row: list = field(default_factory=list)
    table: list = field(default_factory=list)
    checks: list[Callable[[pd.DataFrame], list[dict]]] = field(default_factory=list)
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    # Text columns whose values must be valid UTF-8 (row rule `<column>_valid_utf8`).
    # Checked in Python before GX: a lone surrogate (what undecodable bytes become via
    # surrogateescape or a JSON "\udc80" escape) makes GX's batch handling itself fail.
    utf8_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row) + len(self.table) + len(self.checks) + len(self.utf8_columns)


def _E():
    import great_expectations as gx

    return gx.expectations


def _named(exp, rule: str):
    """Tag an expectation with a short rule name (shown in errors, alerts, Data Docs)."""
    exp.meta = {**(exp.meta or {}), "rule": rule}
    exp.description = rule.replace("_", " ")
    return exp


def _columns_exist(columns) -> list:
    E = _E()
    return [_named(E.ExpectColumnToExist(column=c), f"column_{c}_exists") for c in columns]


def prompts_suite(th: Mapping) -> Suite:
    E = _E()
    return Suite(
        kind="prompts",
        utf8_columns=["prompt"],
        row=[
            _named(E.ExpectColumnValuesToNotBeNull(column="prompt"), "prompt_present"),
            _named(E.ExpectColumnValuesToMatchRegex(column="prompt", regex=r"\S"), "prompt_not_blank"),
            _named(
                E.ExpectColumnValueLengthsToBeBetween(
                    column="prompt", min_value=th["min_prompt_chars"], max_value=th["max_prompt_chars"]
                ),
                "prompt_length_within_bounds",
            ),
        ],
        table=_columns_exist(["prompt_id", "prompt", "dataset"])
        + [
            _named(E.ExpectTableRowCountToBeBetween(min_value=1), "table_not_empty"),
            _named(E.ExpectColumnValuesToBeUnique(column="prompt_id"), "prompt_ids_unique"),
            _named(E.ExpectColumnValuesToBeUnique(column="prompt"), "no_exact_duplicate_prompts"),
        ],
    )


def answers_suite(th: Mapping) -> Suite:
    E = _E()
    ok = {"row_condition": "error.isnull()", "condition_parser": "pandas"}
    return Suite(
        kind="answers",
        utf8_columns=["answer"],
        row=[
            _named(E.ExpectColumnValuesToNotBeNull(column="prompt_id"), "prompt_id_present"),
            _named(E.ExpectColumnValuesToNotBeNull(column="model"), "model_present"),
            _named(E.ExpectColumnValuesToNotBeNull(column="answer", **ok), "answer_or_failure_reason"),
            _named(E.ExpectColumnValuesToNotBeNull(column="finish_reason", **ok), "finish_reason_present"),
        ],
        table=_columns_exist(["prompt_id", "model", "answer", "finish_reason", "error"])
        + [
            _named(E.ExpectTableRowCountToBeBetween(min_value=1), "table_not_empty"),
            _named(
                E.ExpectCompoundColumnsToBeUnique(column_list=["prompt_id", "model"]), "one_row_per_prompt_and_model"
            ),
            _named(
                E.ExpectColumnValuesToBeNull(column="error", mostly=1 - th["max_answer_error_rate"]),
                "answer_error_rate_under_threshold",
            ),
        ],
    )


def judgements_suite(th: Mapping) -> Suite:
    E = _E()
    verdict_due = "failure_reason.isnull() & method == '{}'"

    def derive(df):
        # A parse failure: the judge answered (judge_raw kept) but no verdict could be read
        # from it; a failure without an answer is a request error, counted in the other rate.
        answered = df["judge_raw"].notna() if "judge_raw" in df else pd.Series(False, index=df.index)
        failed = df["failure_reason"].notna() if "failure_reason" in df else pd.Series(False, index=df.index)
        return df.assign(_parse_failure=(answered & failed).astype(bool))

    return Suite(
        kind="judgements",
        row=[
            _named(
                E.ExpectColumnValuesToBeInSet(column="method", value_set=["exact_match", "llm_judge"]), "method_known"
            ),
            _named(E.ExpectColumnValuesToBeInSet(column="score", value_set=[1, 2, 3, 4, 5]), "score_integer_1_to_5"),
            _named(
                E.ExpectColumnValuesToNotBeNull(
                    column="score", row_condition=verdict_due.format("llm_judge"), condition_parser="pandas"
                ),
                "judge_score_or_failure_reason",
            ),
            _named(
                E.ExpectColumnValuesToNotBeNull(
                    column="correct", row_condition=verdict_due.format("exact_match"), condition_parser="pandas"
                ),
                "exact_match_verdict_or_failure_reason",
            ),
        ],
        table=_columns_exist(["prompt_id", "model", "method", "score", "correct", "judge_raw", "failure_reason"])
        + [
            _named(E.ExpectTableRowCountToBeBetween(min_value=1), "table_not_empty"),
            _named(
                E.ExpectCompoundColumnsToBeUnique(column_list=["prompt_id", "model", "method"]),
                "one_verdict_per_prompt_model_method",
            ),
            _named(
                E.ExpectColumnValuesToBeNull(column="failure_reason", mostly=1 - th["max_judge_failure_rate"]),
                "failure_reason_rate_under_threshold",
            ),
            _named(
                E.ExpectColumnValuesToBeInSet(
                    column="_parse_failure",
                    value_set=[False],
                    mostly=1 - th["max_parse_failure_rate"],
                    row_condition="method == 'llm_judge'",
                    condition_parser="pandas",
                ),
                "parse_failure_rate_under_threshold",
            ),
        ],
        derive=derive,
    )


def agreement_failures(report: Mapping, th: Mapping) -> list[dict]:
    """The judge-agreement rules a `labeling.agreement` report breaks (none below
    `min_agreement_rows` verdicts: a handful of rows says too little to stop a run on)."""
    n = int(report.get("n") or 0)
    if n < int(th["min_agreement_rows"]):
        return []
    out = []
    for rule, key, bound in (
        ("judge_agreement_at_least", "accuracy", "min_judge_agreement"),
        ("judge_kappa_at_least", "kappa", "min_judge_kappa"),
    ):
        value, floor = report.get(key), float(th[bound])
        if bound == "min_judge_kappa" and floor <= -1.0:
            continue  # off: kappa is undefined when either rater is constant, so never required by default
        if value is None or value < floor:
            out.append(
                {
                    "rule": rule,
                    "kwargs": {"min_value": floor, "rows": n, "threshold": bound},
                    "observed": value,
                    "unexpected_count": None,
                    "unexpected_sample": [],
                }
            )
    return out


def check_rows_per_model(df: pd.DataFrame, min_rows: int) -> list[dict]:
    counts = df.groupby("model").size()
    return [
        {"rule": "rows_per_model_at_least", "kwargs": {"model": m, "min_value": min_rows}, "observed": int(n)}
        for m, n in counts[counts < min_rows].items()
    ]


def check_class_share(df: pd.DataFrame, max_share: float, column: str = "quality") -> list[dict]:
    """A label set where one quality value dominates teaches a router nothing."""
    values = df[column].dropna().astype(float).round(4)
    if values.empty:
        return []
    shares = values.value_counts(normalize=True)
    top, share = float(shares.index[0]), float(shares.iloc[0])
    if share <= max_share:
        return []
    return [
        {
            "rule": "label_class_share_at_most",
            "kwargs": {"column": column, "max_share": max_share},
            "observed": {"class": top, "share": round(share, 4), "rows": int(len(values))},
        }
    ]


def labels_suite(
    th: Mapping, required_models: list[str] | None = None, optional_columns: list[str] | tuple = ()
) -> Suite:
    """`optional_columns`: those of `OPTIONAL_LABEL_COLUMNS` the table has; token counts
    must then be non-negative where present, an expected score in 1-5 and a judge
    disagreement in 0-1 (a category is free text, or null)."""
    E = _E()
    unknown = sorted(set(optional_columns) - set(OPTIONAL_LABEL_COLUMNS))
    if unknown:
        raise ValueError(f"labels: unknown optional column(s) {unknown}; known: {OPTIONAL_LABEL_COLUMNS}")
    extra = [c for c in OPTIONAL_LABEL_COLUMNS if c in set(optional_columns)]
    table = [
        _named(E.ExpectTableColumnsToMatchSet(column_set=LABEL_COLUMNS + extra, exact_match=True), "label_columns"),
        _named(E.ExpectTableRowCountToBeBetween(min_value=1), "table_not_empty"),
        _named(
            E.ExpectCompoundColumnsToBeUnique(column_list=["prompt_id", "model", "source"]),
            "one_label_per_prompt_model_source",
        ),
    ]
    if required_models:
        table.append(
            _named(
                E.ExpectColumnDistinctValuesToContainSet(column="model", value_set=list(required_models)),
                "every_model_present",
            )
        )
    return Suite(
        kind="labels",
        row=[
            _named(E.ExpectColumnValuesToNotBeNull(column="prompt_id"), "prompt_id_present"),
            _named(E.ExpectColumnValuesToNotBeNull(column="prompt"), "prompt_present"),
            _named(E.ExpectColumnValuesToNotBeNull(column="model"), "model_present"),
            _named(E.ExpectColumnValuesToNotBeNull(column="quality"), "quality_present"),
            _named(E.ExpectColumnValuesToBeBetween(column="quality", min_value=0.0, max_value=1.0), "quality_in_0_1"),
            _named(E.ExpectColumnValuesToBeInSet(column="score", value_set=[1, 2, 3, 4, 5]), "score_integer_1_to_5"),
        ]
        + [
            _named(E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=10_000_000), f"{c}_non_negative")
            for c in extra
            if c in TOKEN_LABEL_COLUMNS
        ]
        + [
            _named(E.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi), f"{c}_in_{lo}_{hi}")
            for c, (lo, hi) in zip(JUDGE_LABEL_COLUMNS, ((1, 5), (0, 1)), strict=False)
            if c in extra
        ],
        table=table,
        checks=[
            lambda df: check_rows_per_model(df, int(th["min_rows_per_model"])),
            lambda df: check_class_share(df, float(th["max_class_share"])),
        ],
    )


def predictions_suite(columns: list[str], expected_rows: int | None = None) -> Suite:
    """Router outputs: every probability column in [0, 1], no NaN, one row per input.
    All table rules: a router that emits NaN is broken, not a row to set aside."""
    E = _E()
    table = _columns_exist(columns)
    if expected_rows is not None:
        table.append(_named(E.ExpectTableRowCountToEqual(value=int(expected_rows)), "one_row_per_input"))
    for c in columns:
        table += [
            _named(E.ExpectColumnValuesToNotBeNull(column=c), f"{c}_not_nan"),
            _named(E.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0), f"{c}_in_0_1"),
        ]
    return Suite(kind="predictions", table=table)


def prediction_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c == "strong_win_rate" or str(c).startswith("quality::")]
