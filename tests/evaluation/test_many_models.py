"""Cost-quality curves, hull and cascades on small worlds where the answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_tasks.evaluation import cascades as cz
from router_tasks.evaluation import many_models as mm


def test_upper_hull_drops_dominated_and_concave_points():
    x, y = mm.upper_hull([1, 2, 3, 4, 10], [0.5, 0.6, 0.9, 0.8, 0.95])
    # (2, 0.6) lies under the segment (1, .5)-(3, .9); (4, .8) is dearer and worse than (3, .9)
    assert x.tolist() == [1, 3, 10] and y.tolist() == [0.5, 0.9, 0.95]


def test_curve_metrics_on_known_curves():
    hull = (np.array([1.0, 100.0]), np.array([0.5, 0.9]))
    oracle = (np.array([1.0, 10.0]), np.array([0.7, 1.0]))
    grid = np.geomspace(1, 100, 400)
    kw = dict(hull=hull, oracle=oracle, grid=grid, best=(0.9, 100.0), cheapest_cost=1.0)
    same = mm.curve_metrics(*hull, **kw)
    assert same["share_of_oracle_area"] == pytest.approx(0.0, abs=1e-9)
    assert same["cost_to_match_best_share"] == pytest.approx(1.0)
    assert mm.curve_metrics(*oracle, **kw)["share_of_oracle_area"] == pytest.approx(1.0)
    # halfway between hull and oracle everywhere: about half the area, matched best earlier
    mid = (np.array([1.0, 10.0, 100.0]), np.array([0.6, 0.9, 0.95]))
    m = mm.curve_metrics(*mid, **kw)
    assert 0.3 < m["share_of_oracle_area"] < 0.9 and m["cost_to_match_best_share"] == pytest.approx(0.1)
    assert m["accuracy_at_cheapest_cost"] == pytest.approx(0.6)
    # a curve that cannot spend as little as the cheapest model gets no credit there
    late = mm.curve_metrics(np.array([10.0, 100.0]), np.array([0.95, 0.95]), **kw)
    assert (
        late["accuracy_at_cheapest_cost"] is None
        and late["share_of_oracle_area"]
        < mm.curve_metrics(np.array([1.0, 100.0]), np.array([0.95, 0.95]), **kw)["share_of_oracle_area"]
    )


def _world(n=600, seed=0):
    """Cheap models a, b agree exactly when both are right; f is dear and always right."""
    rng = np.random.default_rng(seed)
    right_a = rng.random(n) < 0.8
    right_b = rng.random(n) < 0.8
    answers = np.empty((n, 3), dtype=object)
    answers[:, 0] = np.where(right_a, "gold", [f"a{i}" for i in range(n)])
    answers[:, 1] = np.where(right_b, "gold", [f"b{i}" for i in range(n)])
    answers[:, 2] = "gold"
    correct = np.column_stack([right_a, right_b, np.ones(n, bool)])
    cost = np.column_stack([np.full(n, 1.0), np.full(n, 2.0), np.full(n, 50.0)])
    return ["a", "b", "f"], answers, correct, cost


def test_agreement_cascade_counts_every_call_and_returns_the_right_answers():
    models, answers, correct, cost = _world()
    cands = cz.agreement_candidates(models, answers, correct, cost, cheap=[0, 1], finals=[2])
    (c,) = cands
    agree = answers[:, 0] == answers[:, 1]
    assert c.correct.all()  # agreement only when both right, else f, which is always right
    assert np.allclose(c.cost, 3.0 + np.where(agree, 0, 50.0))
    assert set(c.called()[agree]) == {"a+b"} and set(c.answered()[~agree]) == {"f"}
    assert c.cost.mean() < 0.5 * 50.0


def test_nested_selection_chooses_on_training_folds_only():
    n = 100
    folds = np.arange(n) % 2
    # candidate "good_on_0" is perfect on fold 0 and useless on fold 1; "steady" is 0.7 everywhere
    good0 = cz.Candidate("x", "good_on_0", folds == 0, np.ones(n), np.zeros(n, np.int8), [("m", "m")])
    steady = cz.Candidate("x", "steady", np.arange(n) % 10 < 7, np.ones(n), np.zeros(n, np.int8), [("s", "s")])
    curve, dec = cz.nested_curve(lambda k: [good0, steady], folds, [2.0])
    # scoring fold 0, selection sees fold 1 (good0 = 0 there) -> steady; scoring fold 1 -> good0 (1.0 on fold 0)
    chosen = dec.groupby("fold")["setting"].first().to_dict()
    assert chosen == {0: "steady", 1: "good_on_0"}
    expected = (steady.correct[folds == 0].sum() + good0.correct[folds == 1].sum()) / n
    assert curve["accuracy"].iloc[0] == pytest.approx(expected) and expected < steady.correct.mean()


def test_verifier_scores_are_nested_and_informative():
    rng = np.random.default_rng(0)
    n = 500
    y = rng.random(n) < 0.7
    x = np.column_stack([y + rng.normal(0, 0.5, n), rng.normal(size=n)])
    folds = np.arange(n) % 5
    scores = cz.nested_scores(x, y, folds)
    assert sorted(scores) == [0, 1, 2, 3, 4]
    for s in scores.values():
        assert s.shape == (n,) and ((s > 0) & (s < 1)).all()
        assert s[y].mean() > s[~y].mean() + 0.2


@pytest.mark.slow
def test_evaluate_to_dir_on_real_replies(tmp_path):
    pool = [
        "google/gemini-1.5-flash",
        "deepseek-v2.5-0908",
        "openai/gpt-4o-mini-2024-07-18",
        "Qwen/Qwen2.5-3B-Instruct",
        "openai/gpt-4o-2024-08-06",
    ]
    res = mm.evaluate_to_dir("zeroeval-crux", str(tmp_path), pool=pool, folds=3, router_kinds=["random"])
    assert {"metrics.json", "metrics.md", "curve.csv", "plot.png", "decisions.parquet"} <= set(res["files"])
    dec = pd.read_parquet(tmp_path / "decisions.parquet")
    assert {"prompt_id", "policy", "setting", "models_called", "answered_by", "correct", "cost"} <= set(dec.columns)
    # every policy setting decides every prompt once; cascades' costs cover every call made
    per = dec.groupby(["policy", "budget_per_1k"]).size()
    assert (per == res["prompts"]).all()
    casc = dec[dec["policy"] == "cascade-agreement"]
    assert (casc["models_called"].astype(str).str.count(r"\+") >= 1).all()
    # a random router is no better than the zero router; the oracle is the ceiling
    m = res["metrics"]
    assert m["oracle"]["share_of_oracle_area"] == pytest.approx(1.0)
    assert m["router-random-raw"]["share_of_oracle_area"] < 0.05
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


# --- leave-task-out: routers trained on the other task -----------------------------------
_TRANSFER_POOL = [
    "google/gemini-1.5-flash",
    "deepseek-v2.5-0908",
    "openai/gpt-4o-mini-2024-07-18",
    "openai/gpt-4o-2024-08-06",
]


def test_transfer_pool_keeps_models_with_replies_in_both_tasks_and_names_the_rest():
    pool = mm.transfer_pool("crux", mm.other_task("zeroeval-crux"), None)
    assert mm.other_task("crux") == "gsm" and mm.other_task("zeroeval-gsm8k") == "crux"
    assert pool and "Qwen/Qwen2.5-3B-Instruct" not in pool  # CRUXEval's default pool has it; GSM8K has no replies
    with pytest.raises(ValueError, match=r"Qwen/Qwen2.5-3B-Instruct.*no replies in both 'crux' and 'gsm'"):
        mm.transfer_pool("crux", "gsm", ["openai/gpt-4o-2024-08-06", "Qwen/Qwen2.5-3B-Instruct"])
    with pytest.raises(ValueError, match="many-model protocols are"):
        mm.evaluate_to_dir("zeroeval-crux", "/nonexistent", protocol="holdout")


@pytest.mark.slow
def test_leave_task_out_routers_learn_only_the_other_task(tmp_path):
    train, data = mm.load_task("gsm", _TRANSFER_POOL), mm.load_task("crux", _TRANSFER_POOL)
    pred = mm.transfer_router("knn", train, data)
    assert pred["quality"].shape == (data.n, len(_TRANSFER_POOL))
    # no CRUXEval label reached the router: far from every training prompt, kNN falls back
    # on what it learnt, each model's GSM8K standing, not its (different) CRUXEval one
    mean_pred = pred["quality"].mean(axis=0)
    gsm_acc, crux_acc = train.correct.mean(axis=0), data.correct.mean(axis=0)
    assert np.abs(gsm_acc - crux_acc).max() > 0.05  # the two tasks do rank these models differently
    assert np.abs(mean_pred - gsm_acc).mean() < np.abs(mean_pred - crux_acc).mean()

    res = mm.evaluate_to_dir(
        "zeroeval-crux", str(tmp_path), pool=_TRANSFER_POOL, protocol="leave-group-out", router_kinds=["random", "knn"]
    )
    assert res["protocol"] == "leave-group-out" and res["trained_on"] == {"task": "gsm", "prompts": train.n}
    assert not [p for p in res["metrics"] if p.startswith("cascade-")]  # a cascade's choice needs this task's folds
    dec = pd.read_parquet(tmp_path / "decisions.parquet")
    assert (dec.groupby(["policy", "budget_per_1k"]).size() == data.n).all()  # every CRUXEval prompt scored
    assert "leave-task-out: routers trained on all" in (tmp_path / "metrics.md").read_text()
