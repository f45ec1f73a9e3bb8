import pandas as pd
import pytest

from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.validate import DataQualityError, validate_labels


def _labels(store, df):
    return run_stage(
        "labels",
        "test",
        lambda ctx: ctx.write_table(df),
        config={"n": len(df), "h": str(df.values.tolist())},
        store=store,
    )


def _good(n=6):
    rows = []
    for i in range(n):
        for m in ("strong", "weak"):
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": f"prompt {i}",
                    "model": m,
                    "score": pd.NA if m == "strong" else (i % 5) + 1,
                    "correct": True if m == "strong" else pd.NA,
                    "quality": 1.0 if m == "strong" else (i % 5) / 4,
                    "source": "test",
                    "benchmark": None,
                }
            )
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    df["correct"] = df["correct"].astype("boolean")
    df["benchmark"] = df["benchmark"].astype("string")
    return df


def test_good_labels_pass_and_are_reused(local_root):
    store = ArtifactStore(local_root)
    labels = _labels(store, _good())
    ref = validate_labels(labels, required_models=["strong", "weak"], artifact_root=local_root)
    assert ref["rows"] == 12
    assert validate_labels(labels, required_models=["strong", "weak"], artifact_root=local_root)["reused"]


@pytest.mark.parametrize(
    "breaks, rule",
    [
        (lambda d: d.assign(quality=d.quality.where(d.index != 3, 1.7)), "expect_column_values_to_be_between"),
        (lambda d: d.assign(score=d.score.where(d.index != 1, 9)), "expect_column_values_to_be_in_set"),
        (lambda d: pd.concat([d, d.iloc[[0]]], ignore_index=True), "expect_compound_columns_to_be_unique"),
        (lambda d: d[d.model == "strong"], "expect_column_distinct_values_to_contain_set"),
        (lambda d: d.assign(prompt_id=d.prompt_id.where(d.index != 2, None)), "expect_column_values_to_not_be_null"),
    ],
)
def test_bad_labels_stop_with_the_rule_named(local_root, breaks, rule):
    store = ArtifactStore(local_root)
    labels = _labels(store, breaks(_good()))
    with pytest.raises(DataQualityError) as err:
        validate_labels(labels, required_models=["strong", "weak"], artifact_root=local_root)
    assert rule in str(err.value)
    assert not any(k.startswith("stages/validate") for k in store.list())


def test_too_few_rows_for_a_model(local_root):
    store = ArtifactStore(local_root)
    labels = _labels(store, _good(3))
    with pytest.raises(DataQualityError, match="rows_per_model_at_least.*observed=3"):
        validate_labels(labels, min_rows_per_model=5, artifact_root=local_root)
