"""Data-quality suites (router_tasks.data.quality): row rules quarantine, table rules stop the run
naming the rule and the numbers, Data Docs land in the store and in the manifest."""

import json

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.stage import read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import quality, quality_suites
from router_tasks.data.ingest import ingest_prompts
from router_tasks.data.quality import DataQualityError, resolve_thresholds, run_suite
from router_tasks.data.validate import validate_labels


def _rules(failures):
    return {f["rule"]: f for f in failures}


def _jsonl(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return str(path)


# --- prompts, through the ingest stage -------------------------------------------------


def test_overlong_prompts_are_quarantined_and_the_run_goes_on(tmp_path, local_root):
    prompts = [f"short question {i}" for i in range(19)] + ["y" * 80]
    src = _jsonl(tmp_path / "p.jsonl", prompts)
    ref = ingest_prompts(src, thresholds={"max_prompt_chars": 50, "min_kept_share": 0.9}, artifact_root=local_root)
    store = ArtifactStore(local_root)
    assert ref["rows"] == 19

    q = store.read_parquet(f"{ref['key']}/quarantine.parquet")
    assert q["prompt"].tolist() == ["y" * 80]
    assert q["dq_rules"].tolist() == ["prompt_length_within_bounds"]
    assert q["dq_stage"].tolist() == ["ingest"] and q["dq_row"].tolist() == [19]

    m = read_manifest(store, ref)
    info = m["stats"]["quality"]["prompts"]
    assert (info["rows_checked"], info["rows_kept"], info["rows_quarantined"]) == (20, 19, 1)
    assert info["row_rules_broken"] == {"prompt_length_within_bounds": 1}
    assert m["stats"]["data_docs"] == info["data_docs"] == store.uri(f"{ref['key']}/quality/prompts.html")
    html = store.read_bytes(f"{ref['key']}/quality/prompts.html").decode()
    assert "prompt_length_within_bounds".replace("_", " ") in html and "<html" in html.lower()
    # the docs and the quarantine are part of the artifact: listed, hashed
    assert {"data.parquet", "quarantine.parquet", "quality/prompts.html"} <= set(m["files"])


def test_too_many_quarantined_rows_stop_the_run_naming_rule_and_numbers(tmp_path, local_root):
    src = _jsonl(tmp_path / "p.jsonl", ["ok prompt", "y" * 80, "z" * 90, "also fine"])
    with pytest.raises(DataQualityError) as err:
        ingest_prompts(src, thresholds={"max_prompt_chars": 50}, artifact_root=local_root)
    rules = _rules(err.value.failures)
    assert rules["kept_share_at_least"]["observed"] == 0.5
    assert rules["prompt_length_within_bounds"]["unexpected_count"] == 2
    assert "kept_share_at_least" in str(err.value) and "observed=0.5" in str(err.value)
    store = ArtifactStore(local_root)
    # nothing under stages/ (no half artifact); the report and the quarantine beside it
    keys = store.list()
    assert not [k for k in keys if k.startswith("stages/")]
    assert err.value.data_docs.endswith("/prompts.html") and err.value.stage == "ingest"
    report_dir = err.value.data_docs.rsplit("/", 1)[0]
    assert store.read_parquet(report_dir.removeprefix(store.uri("")).lstrip("/") + "/quarantine.parquet")[
        "dq_row"
    ].tolist() == [1, 2]


def test_threshold_sources_and_unknown_names(monkeypatch):
    monkeypatch.setenv("TELA_DQ_THRESHOLDS", json.dumps({"min_kept_share": 0.5, "max_class_share": 0.9}))
    th = resolve_thresholds({"max_class_share": 0.8})
    assert th["min_kept_share"] == 0.5 and th["max_class_share"] == 0.8
    assert th["min_rows_per_model"] == quality.DEFAULT_THRESHOLDS["min_rows_per_model"]
    with pytest.raises(ValueError, match="unknown data-quality thresholds.*min_keep_share"):
        resolve_thresholds({"min_keep_share": 0.5})
    monkeypatch.setenv("TELA_DQ_THRESHOLDS", "{nope")
    with pytest.raises(ValueError, match="TELA_DQ_THRESHOLDS is not a JSON object"):
        resolve_thresholds()


def test_prompts_table_rules():
    df = pd.DataFrame({"prompt_id": ["a", "a", "b"], "prompt": ["x", "y", "x"], "dataset": "d"})
    res = run_suite(df, quality_suites.prompts_suite(resolve_thresholds()), stage="ingest")
    rules = _rules(res.failures)
    assert rules["prompt_ids_unique"]["unexpected_count"] == 2
    assert rules["no_exact_duplicate_prompts"]["unexpected_count"] == 2
    # text that is not valid UTF-8 (a lone surrogate; only object columns can hold one) is a row problem
    bad = pd.DataFrame(
        {"prompt_id": ["a", "b"], "prompt": pd.Series(["fine", "caf\udce9"], dtype=object), "dataset": "d"}
    )
    res = run_suite(bad, quality_suites.prompts_suite(resolve_thresholds()), stage="ingest")
    assert res.failures == [] and res.row_rules == {"prompt_valid_utf8": 1}
    assert quality._printable(res.quarantine)["prompt"].tolist() == ["caf\\udce9"]


# --- answers, judgements, labels, predictions ----------------------------------------------


def _answers():
    return pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
            "model": ["m1", "m2"] * 3,
            "answer": ["4", "four", None, "x", "y", None],
            "finish_reason": ["stop", "stop", None, "length", None, None],
            "error": [None, None, "timeout after 60 s", None, None, None],
            "input_tokens": [5] * 6,
            "output_tokens": [1] * 6,
            "latency_s": [0.1] * 6,
        }
    )


def test_answers_suite():
    th = resolve_thresholds()
    res = run_suite(_answers(), quality_suites.answers_suite(th), stage="generate")
    assert res.failures == []
    # a failed call with a reason is kept; no answer and no reason is not; nor is a missing finish reason
    assert res.row_rules == {"answer_or_failure_reason": 1, "finish_reason_present": 2}
    assert sorted(res.quarantine["dq_row"]) == [4, 5]
    assert res.quarantine.set_index("dq_row").loc[5, "dq_rules"] == "answer_or_failure_reason; finish_reason_present"

    dup = pd.concat([_answers().iloc[:2], _answers().iloc[:1]], ignore_index=True)
    assert "one_row_per_prompt_and_model" in _rules(
        run_suite(dup, quality_suites.answers_suite(th), stage="generate").failures
    )

    errs = _answers().assign(error="HTTP 500", answer=None)
    f = _rules(run_suite(errs, quality_suites.answers_suite(th), stage="generate").failures)[
        "answer_error_rate_under_threshold"
    ]
    assert f["unexpected_percent"] == 100.0 and f["kwargs"]["mostly"] == pytest.approx(0.5)


def _judged(n_parse_failures=0, n=10):
    rows = []
    for i in range(n):
        failed = i < n_parse_failures
        rows.append(
            dict(
                prompt_id=f"p{i}",
                model="m",
                method="llm_judge",
                score=None if failed else (i % 5) + 1,
                correct=None,
                judge_model="j",
                judge_raw="...",
                failure_reason="unparseable verdict" if failed else None,
                rubric_version="1",
            )
        )
    rows.append(
        dict(
            prompt_id="p0",
            model="m",
            method="exact_match",
            score=None,
            correct=True,
            judge_model=None,
            judge_raw=None,
            failure_reason=None,
            rubric_version=None,
        )
    )
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    df["correct"] = df["correct"].astype("boolean")
    return df


def test_judgements_suite_rows_and_rates():
    th = resolve_thresholds({"max_parse_failure_rate": 0.3, "max_judge_failure_rate": 0.5})
    res = run_suite(_judged(2), quality_suites.judgements_suite(th), stage="judge")
    assert res.failures == [] and len(res.quarantine) == 0
    assert "_parse_failure" not in res.kept.columns  # validation-only column

    bad = _judged(0)
    bad.loc[1, "score"] = 7  # not 1-5
    bad.loc[2, "score"] = pd.NA  # no score and no reason
    bad.loc[10, "correct"] = pd.NA  # exact match without a verdict or a reason
    res = run_suite(bad, quality_suites.judgements_suite(th), stage="judge")
    assert res.row_rules == {
        "score_integer_1_to_5": 1,
        "judge_score_or_failure_reason": 1,
        "exact_match_verdict_or_failure_reason": 1,
    }
    assert sorted(res.quarantine["dq_row"]) == [1, 2, 10]

    res = run_suite(_judged(4), quality_suites.judgements_suite(th), stage="judge")
    f = _rules(res.failures)
    # 4 of 10 LLM-judge rows failed to parse: 40% > 30% (the exact-match row is not counted)
    assert f["parse_failure_rate_under_threshold"]["unexpected_percent"] == pytest.approx(40.0)
    assert "failure_reason_rate_under_threshold" not in f  # 4 of 11 < 50%

    # request errors (no judge answer at all) are failures, not parse failures
    errors = _judged(4).assign(judge_raw=lambda d: d["judge_raw"].where(d["failure_reason"].isna(), None))
    assert run_suite(errors, quality_suites.judgements_suite(th), stage="judge").failures == []
    strict = resolve_thresholds({"max_judge_failure_rate": 0.2})
    f = _rules(run_suite(errors, quality_suites.judgements_suite(strict), stage="judge").failures)
    assert set(f) == {"failure_reason_rate_under_threshold"}
    assert f["failure_reason_rate_under_threshold"]["unexpected_count"] == 4


def _labels(n=10, models=("strong", "weak")):
    rows = [
        dict(
            prompt_id=f"p{i}",
            prompt=f"prompt {i}",
            model=m,
            score=None,
            correct=bool((i + j) % 2),
            quality=float((i + j) % 2),
            source="test",
            benchmark=None,
        )
        for i in range(n)
        for j, m in enumerate(models)
    ]
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    df["correct"] = df["correct"].astype("boolean")
    df["benchmark"] = df["benchmark"].astype("string")
    return df


def _stored(root, df):
    return run_stage(
        "labels", "t", lambda ctx: ctx.write_table(df), config={"h": df.to_json()}, store=ArtifactStore(root)
    )


def test_labels_degenerate_distribution_stops(local_root):
    df = _labels().assign(quality=1.0, correct=True)
    with pytest.raises(DataQualityError, match="label_class_share_at_most") as err:
        validate_labels(_stored(local_root, df), artifact_root=local_root)
    assert _rules(err.value.failures)["label_class_share_at_most"]["observed"] == {
        "class": 1.0,
        "share": 1.0,
        "rows": 20,
    }


def test_labels_a_few_bad_rows_are_quarantined(local_root):
    df = _labels(30)
    df.loc[7, "quality"] = 1.5
    ref = validate_labels(_stored(local_root, df), required_models=["strong", "weak"], artifact_root=local_root)
    store = ArtifactStore(local_root)
    assert ref["rows"] == 59
    q = store.read_parquet(f"{ref['key']}/quarantine.parquet")
    assert q[["prompt_id", "model", "dq_rules", "dq_stage"]].values.tolist() == [
        ["p3", "weak", "quality_in_0_1", "validate"]
    ]
    assert read_manifest(store, ref)["stats"]["quality"]["labels"]["kept_share"] == pytest.approx(59 / 60)


def test_predictions_suite():
    good = pd.DataFrame({"prompt": ["a", "b"], "strong_win_rate": [0.2, 1.0], "quality::m": [0.0, 0.5]})
    cols = quality_suites.prediction_columns(good)
    assert cols == ["strong_win_rate", "quality::m"]
    assert run_suite(good, quality_suites.predictions_suite(cols, expected_rows=2), stage="score").failures == []

    bad = good.assign(strong_win_rate=[np.nan, 0.5], **{"quality::m": [1.2, 0.1]})
    f = _rules(run_suite(bad, quality_suites.predictions_suite(cols, expected_rows=3), stage="score").failures)
    assert set(f) == {"strong_win_rate_not_nan", "quality::m_in_0_1", "one_row_per_input"}
    assert f["one_row_per_input"]["observed"] == 2
    assert f["quality::m_in_0_1"]["unexpected_sample"] == [1.2]
