"""Cross-fit protocol: real train stage, real random router, real benchmark files.

The random router's score of a prompt is a fixed hash of (seed, model, prompt), whatever it
trained on, so the stitched scores have a known answer; the leakage guarantees are checked
on the fold artifacts the run actually wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from factories import labels_table
from router_tasks.core.stage import ArtifactRef, load_table, read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.crossfit import (
    LeakageError,
    assign_folds,
    assign_group_folds,
    benchmark_labels,
    check_fold_disjoint,
    crossfit_evaluate,
    fold_labels,
)
from router_tasks.routers import RandomRouter
from router_tasks.training.train import train_router

STRONG, WEAK = bm.STRONG_MODEL, bm.WEAK_MODEL


def _labels(prompts: list[str]) -> pd.DataFrame:
    return labels_table(prompts, lambda i, _: {STRONG: True, WEAK: i % 2 == 0})


@pytest.fixture
def trained(local_root):
    """A random router trained by the real train stage on 6 own prompts plus 3 GSM8K
    benchmark prompts (so the cross-fit must drop those from the folds that score them)."""
    gsm = bm.load_benchmark("gsm8k").sort_values("prompt_id").head(3)
    own = _labels([f"own prompt number {i}" for i in range(6)] + gsm["prompt"].tolist())
    labels_ref = run_stage(
        "labels", "test", lambda ctx: ctx.write_table(own), config={"t": "crossfit"}, store=ArtifactStore(local_root)
    )
    router = train_router(labels_ref, router_type="random", router_params={"seed": 7}, artifact_root=local_root)
    return router, labels_ref, own, set(gsm["prompt_id"])


def test_assign_folds_balanced_and_deterministic():
    ids = [f"p{i}" for i in range(11)]
    f = assign_folds(ids, 3, seed=1)
    assert list(f.index) == ids  # in the caller's order
    assert sorted(f.value_counts().tolist()) == [3, 4, 4]
    assert f.equals(assign_folds(list(reversed(ids)), 3, seed=1).reindex(ids))  # order-free
    assert not f.equals(assign_folds(ids, 3, seed=2))
    with pytest.raises(ValueError, match="2 prompts cannot fill 3 folds"):
        assign_folds(["a", "b"], 3)


def test_fold_labels_hand_computed():
    train = pd.DataFrame(
        {
            "prompt_id": ["a", "a", "b", "c"],
            "prompt": ["A", "A", "B", "C"],
            "model": ["s", "w", "s", "s"],
            "quality": [1.0, 0.0, 1.0, 0.5],
        }
    )
    bench = pd.DataFrame(
        {
            "prompt_id": ["b", "d", "e"],
            "prompt": ["B", "D", "E"],
            "model": ["s", "s", "w"],
            "quality": [0.0, 1.0, 0.0],
            "source": "routellm:x",
        }
    )
    out = fold_labels(train, bench, heldout={"c", "e"})
    # c (held out) leaves, b keeps its training label (not doubled), d joins, e stays out
    assert list(zip(out["prompt_id"], out["quality"], strict=False)) == [("a", 1.0), ("a", 0.0), ("b", 1.0), ("d", 1.0)]
    assert list(out.columns) == list(train.columns)


def test_check_fold_disjoint_names_the_prompt():
    scored = pd.DataFrame({"prompt_id": ["x", "y"]})
    check_fold_disjoint("gsm8k", 2, scored, {"z"})
    with pytest.raises(LeakageError, match="fold 2.*prompt_id y"):
        check_fold_disjoint("gsm8k", 2, scored, {"y", "z"})


def test_mt_bench_labels_scaled_to_unit_interval():
    mt = bm.load_benchmark("mt-bench").head(4)
    lab = benchmark_labels("mt-bench", mt["prompt_id"], [STRONG, WEAK, "not-in-bench"])
    assert set(lab["model"]) == {STRONG, WEAK} and len(lab) == 8
    got = lab[lab["model"] == STRONG].set_index("prompt_id")["quality"].astype(float)
    want = (mt.set_index("prompt_id")["strong_quality"] - 1.0) / 9.0
    assert np.allclose(got.reindex(want.index), want)


def test_crossfit_random_router(local_root, trained):
    router, labels_ref, own, gsm_in_train = trained
    store = ArtifactStore(local_root)
    ref = crossfit_evaluate(router, "gsm8k", folds=3, max_prompts=30, random_seeds=2, artifact_root=local_root)
    assert ref["stage"] == "crossfit" and not ref["reused"]
    key = ArtifactRef.of(ref).key
    manifest = read_manifest(store, ref)
    assert manifest["inputs"]["labels"]["key"] == labels_ref["key"]  # retrained from the recorded labels

    bench = bm.load_benchmark("gsm8k").sort_values("prompt_id").head(30)
    scores = store.read_parquet(f"{key}/scores_gsm8k.parquet")
    assert sorted(scores["prompt_id"]) == sorted(bench["prompt_id"])  # each prompt scored once
    assert scores["prompt_id"].is_unique
    # the random router's scores do not depend on its training data: known answer
    expected = RandomRouter([STRONG, WEAK], STRONG, WEAK, {"seed": 7}).strong_win_rate(scores["prompt"].tolist())
    assert np.allclose(scores["strong_win_rate"], expected)

    table = load_table(ref, store)
    assert list(table["protocol"]) == ["crossfit"] and table["n_prompts"].iloc[0] == 30
    again = mx.summarize(scores["strong_win_rate"], scores["strong_quality"], scores["weak_quality"], random_seeds=2)
    assert table["apgr"].iloc[0] == pytest.approx(again["routellm"]["apgr"])
    assert table["apgr_exact"].iloc[0] == pytest.approx(again["exact"]["apgr"])

    # leakage: no fold router trained on a prompt it scored; each trained on all other folds
    folds = store.read_parquet(f"{key}/folds.parquet")
    assert len(folds) == 3 and folds["n_scored"].sum() == 30
    own_ids = set(own["prompt_id"])
    for row in folds.itertuples():
        trained_ids = set(store.read_parquet(f"{row.train_key}/train_prompts.parquet")["prompt_id"])
        held = set(scores.loc[scores["fold"] == row.fold, "prompt_id"])
        others = set(scores["prompt_id"]) - held
        assert not trained_ids & held
        assert others <= trained_ids
        assert (own_ids - held) <= trained_ids  # the router's own labels stay, minus held-out prompts
        fold_router = json.loads(store.read_bytes(f"{row.train_key}/router.json"))
        assert (fold_router["kind"], fold_router["params"]) == ("random", {"seed": 7})
    # the GSM8K prompts the router had trained on were scored by folds that dropped them
    assert gsm_in_train <= set(scores["prompt_id"])

    report = json.loads(store.read_bytes(f"{key}/metrics.json"))
    assert report["protocol"] == "crossfit" and report["benchmarks"]["gsm8k"]["protocol"] == "crossfit"
    assert store.read_bytes(f"{key}/plot_gsm8k.png")[:4] == b"\x89PNG"
    # idempotent: the same call reuses everything
    assert (
        crossfit_evaluate(router, "gsm8k", folds=3, max_prompts=30, random_seeds=2, artifact_root=local_root)["reused"]
        is True
    )


def test_crossfit_needs_recorded_training_labels(local_root):
    from router_tasks.routers import save_router

    def compute(ctx):
        save_router(RandomRouter([STRONG, WEAK], STRONG, WEAK), ctx)
        ctx.write_table(pd.DataFrame({"prompt_id": ["x"]}), "train_prompts.parquet")

    router = run_stage("train", "test", compute, config={}, store=ArtifactStore(local_root))
    with pytest.raises(ValueError, match="records no 'labels' input"):
        crossfit_evaluate(router, "gsm8k", folds=2, max_prompts=4, artifact_root=local_root)


def test_evaluate_to_dir_crossfit(local_root, trained, tmp_path):
    from router_tasks.evaluation.export import evaluate_to_dir

    router = trained[0]
    res = evaluate_to_dir(
        router,
        "mt-bench",
        "crossfit",
        str(tmp_path / "cf"),
        artifact_root=local_root,
        folds=2,
        max_prompts=10,
        random_seeds=1,
    )
    scores = pd.read_parquet(tmp_path / "cf" / "scores.parquet")
    assert list(scores.columns[:2]) == ["prompt", "strong_win_rate"] and len(scores) == 10
    assert sorted(scores["fold"].unique()) == [0, 1]
    report = json.loads((tmp_path / "cf" / "metrics.json").read_text())
    assert report["protocol"] == "crossfit" and res["artifact"]["stage"] == "crossfit"
    assert res["metrics"]["protocol"] == "crossfit" and res["metrics"]["n_prompts"] == 10


def test_assign_group_folds_keeps_groups_whole_and_balanced():
    groups = pd.Series(["a"] * 6 + ["b"] * 3 + ["c"] * 3 + ["d"] * 2 + ["e"] * 1, index=range(100, 115))
    f = assign_group_folds(groups, 3, seed=0)
    assert list(f.index) == list(groups.index)
    assert (f.groupby(groups).nunique() == 1).all()  # a group never spans two folds
    assert sorted(f.value_counts().tolist()) == [4, 5, 6]  # largest first, to the emptiest fold
    assert f.equals(assign_group_folds(groups, 3, seed=0))
    assert assign_group_folds(groups.head(9), 5).nunique() == 2  # fewer groups than folds: one fold each
    with pytest.raises(ValueError, match="have no group"):
        assign_group_folds(pd.Series(["a", None]), 2)


def test_leave_group_out_mmlu_by_subject(local_root, trained):
    """Every held-out subject leaves the fold's training labels whole (scored or not),
    and the benchmark labels of the other subjects join it."""
    router, labels_ref, own, _ = trained
    store = ArtifactStore(local_root)
    ref = crossfit_evaluate(
        router, "mmlu", folds=3, max_prompts=24, random_seeds=1, artifact_root=local_root, protocol="leave-group-out"
    )
    key = ArtifactRef.of(ref).key
    scores = store.read_parquet(f"{key}/scores_mmlu.parquet")
    assert len(scores) == 24 and scores["prompt_id"].is_unique
    assert (scores.groupby("group")["fold"].nunique() == 1).all()
    subject_of = bm.load_benchmark("mmlu", decontaminate=False).drop_duplicates("prompt_id").set_index("prompt_id")
    folds = store.read_parquet(f"{key}/folds.parquet")
    assert set(folds["fold"]) == set(scores["fold"])
    for row in folds.itertuples():
        trained_ids = set(store.read_parquet(f"{row.train_key}/train_prompts.parquet")["prompt_id"])
        held = set(scores.loc[scores["fold"] == row.fold, "group"])
        trained_subjects = set(subject_of.reindex(list(trained_ids))["category"].dropna())
        assert not trained_subjects & held  # no subject both trained on and scored
        others = set(scores.loc[scores["fold"] != row.fold, "prompt_id"])
        assert others <= trained_ids and set(own["prompt_id"]) <= trained_ids
    report = json.loads(store.read_bytes(f"{key}/metrics.json"))
    assert report["protocol"] == "leave-group-out" and report["group_column"] == "category"
    assert list(load_table(ref, store)["protocol"]) == ["leave-group-out"]


def test_leave_group_out_holds_a_benchmark_out_whole(local_root, trained, tmp_path):
    """GSM8K has no groups: one fold, the router retrained without any GSM8K prompt
    (also the ones it had trained on and that the capped run does not score)."""
    from router_tasks.evaluation.export import evaluate_to_dir

    router, _, own, gsm_in_train = trained
    store = ArtifactStore(local_root)
    res = evaluate_to_dir(
        router,
        "gsm8k",
        "leave-group-out",
        str(tmp_path / "lgo"),
        artifact_root=local_root,
        max_prompts=2,
        random_seeds=1,
    )
    folds = store.read_parquet(f"{ArtifactRef.of(res['artifact']).key}/folds.parquet")
    assert len(folds) == 1 and folds["n_scored"].iloc[0] == 2
    trained_ids = set(store.read_parquet(f"{folds['train_key'].iloc[0]}/train_prompts.parquet")["prompt_id"])
    assert not trained_ids & gsm_in_train and trained_ids == set(own["prompt_id"]) - gsm_in_train
    assert res["metrics"]["protocol"] == "leave-group-out"
