"""`score_router`: the evaluation computed from in-memory inputs (a loaded router, the ids it
trained on, an own-labels table), without a stage, a store or an artifact."""

from __future__ import annotations

import pandas as pd
import pytest

from router_tasks.core.prompts import prompt_id
from router_tasks.core.schemas import OWN_BENCHMARK
from router_tasks.data import routellm as bm
from router_tasks.data.labels import own_eval_plan
from router_tasks.evaluation.evaluate import OwnLabels, score_router
from router_tasks.evaluation.metrics import LeakageError
from router_tasks.routers import make_router

BIG, SMALL = "big", "small"
EASY = "What is {i} plus {i}?"
HARD = "Prove that the sequence number {i} of nested radicals converges and give a rigorous bound on its limit."


def own_labels(n: int) -> pd.DataFrame:
    """n own prompts, half easy and half hard: the big model is right on every one, the small
    model on the easy ones only."""
    rows = []
    for i in range(n):
        hard = i % 2 == 1
        text = (HARD if hard else EASY).format(i=i)
        for model, quality in ((BIG, 1.0), (SMALL, 0.0 if hard else 1.0)):
            rows.append(
                dict(
                    prompt_id=prompt_id(text),
                    prompt=text,
                    model=model,
                    score=None,
                    correct=None,
                    quality=quality,
                    source="generated:team",
                    benchmark="own",
                )
            )
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    return df


def split(labels: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """(training rows, their prompt ids): every prompt outside the fixed holdout."""
    held = set(own_eval_plan(labels, BIG, SMALL)["heldout"])
    train = labels[~labels["prompt_id"].isin(held)]
    return train, set(train["prompt_id"])


@pytest.fixture(scope="module")
def labels():
    return own_labels(240)  # >= 150 prompts on both models: the holdout protocol, no retraining


def test_random_router_on_own_labels_and_a_benchmark(labels):
    train, trained = split(labels)
    router = make_router("random", [BIG, SMALL], BIG, SMALL, {"seed": 3}).fit(train)
    ev = score_router(router, trained, own=OwnLabels(labels), benchmarks=["mt-bench"])

    # the RouteLLM benchmark has no results for these models: skipped, with the reason
    assert [r.name for r in ev.results] == [OWN_BENCHMARK]
    assert "no results for big, small" in ev.skipped["mt-bench"]
    own = ev.results[0]
    held = labels["prompt_id"].nunique() - len(trained)
    assert 20 <= held < 120  # the ~20% hash holdout
    assert len(own.scored) == own.summary["n"] == held
    assert not own.scored["prompt_id"].isin(trained).any()
    assert own.scored["strong_win_rate"].between(0, 1).all()
    assert own.summary["plan"]["protocol"] == "holdout" and own.summary["plan"]["n_heldout"] == held
    assert own.summary["strong_mean"] == 1.0 and 0 < own.summary["weak_mean"] < 1
    for mode in ("routellm", "exact"):
        m = own.summary[mode]
        assert 0 < m["oracle_apgr"] <= 1
        assert -1 <= m["apgr"] <= m["oracle_apgr"]
    # the table alone cannot retrain: no left-out kinds without the stored labels
    assert ev.left_out is None and ev.own_used is None


def test_learned_router_sends_hard_prompts_to_the_strong_model(labels):
    train, trained = split(labels)
    router = make_router("knn", [BIG, SMALL], BIG, SMALL).fit(train)
    ev = score_router(router, trained, own=OwnLabels(labels))
    own = ev.results[0].summary
    # unseen hard prompts go to the big model first: the oracle's ordering, far above random
    assert own["exact"]["apgr"] == pytest.approx(own["exact"]["oracle_apgr"], abs=0.02)
    assert own["exact"]["apgr"] > own["exact"]["random_apgr"] + 0.2


def test_a_trained_prompt_is_never_scored(labels):
    train, trained = split(labels)
    router = make_router("random", [BIG, SMALL], BIG, SMALL).fit(train)
    held = sorted(set(labels["prompt_id"]) - trained)
    with pytest.raises(LeakageError, match="held-out prompts are in the router's training prompts"):
        score_router(router, trained | {held[0]}, own=OwnLabels(labels))


def test_routellm_benchmark_scores_every_transfer_prompt():
    router = make_router("random", [bm.STRONG_MODEL, bm.WEAK_MODEL], bm.STRONG_MODEL, bm.WEAK_MODEL)
    ev = score_router(router, set(), own="no own labels here", benchmarks=["mt-bench"], random_seeds=2)
    assert ev.skipped == {OWN_BENCHMARK: "no own labels here"}
    (res,) = ev.results
    assert res.name == "mt-bench" and res.summary["protocol"] == "transfer"
    assert len(res.scored) == res.summary["n"] == 72
    assert res.commercial is not None and len(res.commercial)  # Martian and Unify's points


def test_few_own_labels_need_the_stored_artifact():
    labels = own_labels(20)  # cross-fit protocol: retrains per fold, from a stored artifact
    train, trained = split(labels)
    router = make_router("random", [BIG, SMALL], BIG, SMALL).fit(train)
    ev = score_router(router, set(), own=OwnLabels(labels))
    assert ev.results == [] and "artifact and store" in ev.skipped[OWN_BENCHMARK]
