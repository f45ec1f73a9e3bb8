"""The bundled ZeroEval data and our re-implementation of its scorer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router_tasks.data import zeroeval as ze
from router_tasks.data.tokens import count_tokens


def test_extraction_follows_zeroeval_rules():
    # the first JSON block, fenced or not, line breaks inside it removed
    assert ze.extract_answer('```json\n{"reasoning": "a\nb", "answer": "18"}\n```')[:2] == ("18", True)
    assert ze.extract_answer('{"reasoning": "x", "answer": 18}')[0] == "18"
    assert ze.extract_answer('{"reasoning": "x", "answer": [1, 2]}')[0] == "[1, 2]"
    # only the first block counts; then the regular expressions on the raw text
    assert ze.extract_answer('{"note": 1} then {"answer": "5"}')[0] == "5"  # regex fallback finds it
    assert ze.extract_answer('broken {"answer": "7", } json')[:2] == ("7", False)
    assert ze.extract_answer('"answer": 12 dollars')[0] == "12"
    assert ze.extract_answer("so the answer: 4")[0] == "4"
    # \\boxed only for Llama-3.1 models, only near the end
    boxed = "long reasoning ... \\boxed{42}"
    assert ze.extract_answer(boxed, "meta-llama/Meta-Llama-3.1-8B-Instruct")[0] == "42"
    assert ze.extract_answer(boxed, "google/gemma-2-2b-it")[0] is None
    assert ze.extract_answer("", "x")[0] is None


def test_comparisons():
    assert ze.gsm_correct("18 dollars", "# 18") and ze.gsm_correct("$1,800", "#1800")
    assert ze.gsm_correct("3/4", "# 0.75") and not ze.gsm_correct("19", "# 18") and not ze.gsm_correct(None, "# 1")
    assert ze.crux_correct("'abc'", "'abc'") and ze.crux_correct('"abc"', "'abc'")
    assert not ze.crux_correct("[1,2]", "[1, 2]") and ze.crux_correct("a\nb", "'a\\nb'")
    assert ze.normalized_answer("gsm", "18.0") == ze.normalized_answer("gsm", "$18")
    with pytest.raises(ValueError, match="unknown ZeroEval task 'mmlu'"):
        ze.is_correct("mmlu", "a", "a")


def test_bundled_correctness_reproduces_published_accuracy_within_a_point():
    acc = pd.read_csv(ze.BUNDLED_DIR / "accuracy.csv")
    assert len(acc) == 95 and acc["published"].notna().all()
    assert (acc["accuracy"] - acc["published"]).abs().max() <= 1.0
    # the shipped correctness column is what the table was computed from
    for task in ze.TASKS:
        r = ze.results(task)
        ours = (100 * r.groupby("model")["correct"].mean()).round(2)
        table = acc[acc["task"] == task].set_index("model")["accuracy"]
        pd.testing.assert_series_equal(ours.sort_index(), table.sort_index(), check_names=False, atol=0.006)


def test_labels_are_a_labels_table_with_token_counts():
    pool = ze.POOLS["crux"][:3]
    lab = ze.labels("zeroeval-crux", models=pool)
    assert len(lab) == 800 * 3 and set(lab["model"]) == set(pool)
    assert lab["quality"].isin([0.0, 1.0]).all() and (lab["output_tokens"] >= 0).all()
    assert not lab.duplicated(["prompt_id", "model"]).any()
    # input tokens are counted on the templated prompt: more than the question alone
    one = lab.drop_duplicates("prompt_id").head(20)
    assert (one["input_tokens"].to_numpy() > count_tokens(one["prompt"].tolist())).all()
    with pytest.raises(ValueError, match="has no model"):
        ze.labels("crux", models=["nobody/none"])


def test_prices_file_shape_and_errors(tmp_path):
    p = tmp_path / "prices.json"
    p.write_text(json.dumps({"_about": "notes", "a": [1, 2], "b": 0.5}))
    assert ze.read_prices(str(p)) == {"a": (1.0, 2.0), "b": (0.5, 0.5)}
    assert np.isclose(ze.call_cost(1000, 500, (1.0, 2.0)), 0.002)
    with pytest.raises(ValueError, match="price of 'c'"):
        ze.read_prices({"c": "cheap"})
    with pytest.raises(ValueError, match="price of 'd' must be finite"):
        ze.read_prices({"d": [-1, 1]})
    assert set(ze.POOLS["gsm"]) <= set(ze.bundled_prices())
