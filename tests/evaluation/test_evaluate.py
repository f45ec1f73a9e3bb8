"""The evaluate stage on the bundled benchmarks, with real train artifacts.

`LengthRouter` is a test double of the Router *interface* (scores by prompt length, no
model), registered like any router kind and saved with the real `save_router`; the
evaluate code, the metrics and the stores are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.stage import ArtifactRef, load_table, read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.evaluation.metrics import LeakageError
from router_tasks.routers import ROUTERS, save_router
from router_tasks.routers.base import Router

STRONG, WEAK = bm.STRONG_MODEL, bm.WEAK_MODEL


class LengthRouter(Router):
    """Longer prompt -> more need for the strong model."""

    kind = "by_length"

    def fit(self, labels):
        return self

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        n = np.array([len(p) for p in prompts], dtype=float)
        return pd.DataFrame({self.strong_model: np.minimum(n / 2000.0, 1.0), self.weak_model: 0.0})

    def save(self, write_file) -> None:
        write_file("length.json", b"{}")

    @classmethod
    def load(cls, read_file, meta):
        json.loads(read_file("length.json"))
        return cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(ROUTERS, LengthRouter.kind, LengthRouter)


def make_train_artifact(root: str, train_ids: list[str] | None, tag: str = "") -> dict:
    """A complete train artifact as the train stage lays it out."""

    def compute(ctx):
        save_router(LengthRouter([STRONG, WEAK], STRONG, WEAK), ctx, training={"tag": tag})
        if train_ids is not None:
            ctx.write_table(pd.DataFrame({"prompt_id": train_ids}), "train_prompts.parquet")
        ctx.write_table(pd.DataFrame({"model": [STRONG, WEAK]}))

    return run_stage(
        "train", "test", compute, config={"tag": tag, "n": len(train_ids or [])}, store=ArtifactStore(root)
    )


def test_evaluate_all_benchmarks(local_root):
    train_ids = sorted(bm.routellm_training_labels([STRONG, WEAK])["prompt_id"].unique())
    router = make_train_artifact(local_root, train_ids)
    ref = evaluate_router(router, random_seeds=2, artifact_root=local_root)
    store = ArtifactStore(local_root)
    key = ArtifactRef.of(ref).key
    assert ref["stage"] == "evaluate" and not ref["reused"]

    table = load_table(ref, store)
    assert list(table["benchmark"]) == ["mmlu", "gsm8k", "mt-bench"]
    assert list(table["protocol"]) == ["holdout", "holdout", "transfer"]
    for col in ("apgr", "auc", "cpt20", "cpt50", "cpt80", "random_apgr", "oracle_apgr", "apgr_exact", "cpt50_exact"):
        assert table[col].notna().all(), col

    report = json.loads(store.read_bytes(f"{key}/metrics.json"))
    assert report["router"]["n_train_prompts"] == len(train_ids)
    for bench in bm.BENCHMARKS:
        scores = store.read_parquet(f"{key}/scores_{bench}.parquet")
        expected = bm.get_benchmark(bench).eval_table(STRONG, WEAK)
        assert list(scores["prompt_id"]) == list(expected["prompt_id"])
        assert not scores["prompt_id"].isin(train_ids).any()
        # the scores are the router's, the metrics follow from them
        lengths = scores["prompt"].str.len().to_numpy(float)
        assert np.allclose(scores["strong_win_rate"], (np.minimum(lengths / 2000, 1) + 1) / 2)
        again = mx.summarize(
            scores["strong_win_rate"], scores["strong_quality"], scores["weak_quality"], random_seeds=2
        )
        row = table.set_index("benchmark").loc[bench]
        assert row["apgr"] == pytest.approx(again["routellm"]["apgr"])
        assert row["cpt80_exact"] == pytest.approx(again["exact"]["cpt80"])
        assert report["benchmarks"][bench]["n_prompts"] == len(scores) == row["n_prompts"]
        png = store.read_bytes(f"{key}/plot_{bench}.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        curves = store.read_parquet(f"{key}/curves_{bench}.parquet")
        assert set(zip(curves["mode"], curves["method"], strict=False)) == {
            (m, k) for m in mx.MODES for k in ("router", "random", "oracle")
        }
    md = store.read_bytes(f"{key}/report.md").decode()
    for bench in table["benchmark"]:
        row = table.set_index("benchmark").loc[bench]
        assert f"| {bench} | {row['protocol']} | {row['n_prompts']} | {row['apgr']:.3f} |" in md
        assert f"](plot_{bench}.png)" in md
    assert "fingerprint" in md
    assert table.set_index("benchmark").loc["mmlu", "n_prompts"] > 2000  # the ~20% holdout
    assert table.set_index("benchmark").loc["mt-bench", "n_prompts"] == 72
    routers = {c["router"]: c for c in report["benchmarks"]["mt-bench"]["commercial_routers"]}
    assert routers["unify"]["strong_share"] == pytest.approx(0.5) and routers["martian"]["strong_share"] is None
    assert "commercial_routers" not in report["benchmarks"]["mmlu"]

    manifest = read_manifest(store, ref)
    assert manifest["stats"]["prompts_scored"]["mt-bench"] == 72
    # same router, same config: reused, no recomputation
    assert evaluate_router(router, random_seeds=2, artifact_root=local_root)["reused"] is True


def test_calls_and_dollars_saved_at_95_percent_in_both_modes(local_root):
    train_ids = sorted(bm.routellm_training_labels([STRONG, WEAK])["prompt_id"].unique())
    router = make_train_artifact(local_root, train_ids, tag="savings")
    prices = {STRONG: 30.0, WEAK: 0.6}  # $ per 1M tokens: a weak call costs 2% of a strong one
    ref = evaluate_router(
        router, random_seeds=2, max_prompts=300, quality_target=0.8, prices=prices, artifact_root=local_root
    )
    store = ArtifactStore(local_root)
    key = ArtifactRef.of(ref).key
    table = load_table(ref, store).set_index("benchmark")
    report = json.loads(store.read_bytes(f"{key}/metrics.json"))
    md = store.read_bytes(f"{key}/report.md").decode()
    assert report["quality_target"] == 0.8 and "## Strong-model calls saved at 95%" in md
    for bench in bm.BENCHMARKS:
        scores = store.read_parquet(f"{key}/scores_{bench}.parquet")
        strong, weak = scores["strong_quality"].to_numpy(float), scores["weak_quality"].to_numpy(float)
        floor = 1.0 if bench == "mt-bench" else 0.0  # MT-Bench grades run 1-10
        for mode, suffix in (("routellm", ""), ("exact", "_exact")):
            curve = mx.curve(scores["strong_win_rate"], strong, weak, mode)
            for target, name in ((0.95, "95"), (0.8, "target")):
                # the metric is checked by hand in test_metrics; here: the stage's target, floor and prices
                share = 1 - mx.calls_saved(curve, strong.mean(), target, mode, floor=floor)
                saved = table.loc[bench, f"calls_saved_at_{name}{suffix}"]
                assert saved == pytest.approx(1 - share), (bench, mode, target)
                assert report["benchmarks"][bench][mode][f"calls_saved_at_{name}"] == pytest.approx(saved)
                assert table.loc[bench, f"dollars_saved_at_{name}{suffix}"] == pytest.approx(saved * (1 - 0.6 / 30))
        assert report["benchmarks"][bench]["prices"] == {"strong": 30.0, "weak": 0.6}
        row = table.loc[bench]
        assert (
            f"| {bench} | {100 * row['calls_saved_at_95']:.1f}% | {100 * row['calls_saved_at_95_exact']:.1f}% | "
            f"{100 * row['calls_saved_at_target']:.1f}% |"
        ) in md


def test_leaked_prompt_is_refused(local_root):
    held = bm.load_benchmark("gsm8k", split="eval")
    router = make_train_artifact(local_root, ["other-id", held["prompt_id"].iloc[3]], tag="leaky")
    with pytest.raises(LeakageError, match=f"'gsm8k'.*prompt_id {held['prompt_id'].iloc[3]}"):
        evaluate_router(router, benchmarks=["gsm8k"], random_seeds=1, artifact_root=local_root)
    assert ArtifactStore(local_root).list("stages/evaluate") == []  # nothing half-written passes as done
    # MT-Bench is checked too, on its first-turn prompt ids
    mt = bm.load_benchmark("mt-bench")
    router = make_train_artifact(local_root, [mt["prompt_id"].iloc[0]], tag="mt")
    with pytest.raises(LeakageError, match="'mt-bench'"):
        evaluate_router(router, benchmarks=["mt-bench"], random_seeds=1, artifact_root=local_root)


def test_router_without_training_ids_is_refused(local_root):
    router = make_train_artifact(local_root, None, tag="no-ids")
    with pytest.raises(LeakageError, match="train_prompts.parquet"):
        evaluate_router(router, benchmarks=["mt-bench"], random_seeds=1, artifact_root=local_root)


def test_unknown_benchmark_fails_before_work(local_root):
    router = make_train_artifact(local_root, [], tag="x")
    with pytest.raises(KeyError, match="arena"):
        evaluate_router(router, benchmarks=["arena"], artifact_root=local_root)


def test_random_router_trained_on_routellm_labels_on_s3(s3_root):
    """End to end with the real train stage and the real random router, on the S3 API:
    RouteLLM training labels never collide with the evaluation holdout."""
    from router_tasks.training.train import train_router

    store = ArtifactStore(s3_root)
    labels = bm.routellm_training_labels([STRONG, WEAK])
    labels_ref = run_stage("labels", "test", lambda ctx: ctx.write_table(labels), config={"t": 1}, store=store)
    router = train_router(labels_ref, router_type="random", artifact_root=s3_root)
    ref = evaluate_router(router, benchmarks=["gsm8k", "mt-bench"], random_seeds=3, artifact_root=s3_root)
    table = load_table(ref, store).set_index("benchmark")
    assert list(table.index) == ["gsm8k", "mt-bench"]
    # a random router is no better than chance, and nothing beats the oracle
    assert -0.5 < table.loc["gsm8k", "apgr"] < 1.5
    assert (table["oracle_apgr"] > table[["apgr", "random_apgr"]].max(axis=1)).all()
    assert (table["oracle_apgr_exact"] >= table["apgr_exact"]).all()


def test_evaluate_to_dir_transfer_and_holdout(local_root, tmp_path):
    from router_tasks.evaluation.export import evaluate_to_dir

    gsm_train = sorted(bm.load_benchmark("gsm8k", split="train")["prompt_id"])
    router = make_train_artifact(local_root, gsm_train, tag="to-dir")
    out = tmp_path / "out"
    res = evaluate_to_dir(router["key"], "mt-bench", "transfer", str(out), artifact_root=local_root, random_seeds=1)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "plot.png", "scores.parquet"]
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns[:2]) == ["prompt", "strong_win_rate"] and len(scores) == 72
    lengths = scores["prompt"].str.len().to_numpy(float)
    assert np.allclose(scores["strong_win_rate"], (np.minimum(lengths / 2000, 1) + 1) / 2)
    report = json.loads((out / "metrics.json").read_text())
    assert report["protocol"] == "transfer" and report["benchmark"] == "mt-bench"
    assert report["benchmarks"]["mt-bench"]["n_prompts"] == 72 == res["metrics"]["n_prompts"]
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"

    # GSM8K: the router trained on its non-holdout prompts, so only the holdout is honest
    held = evaluate_to_dir(router, "gsm8k", "holdout", str(tmp_path / "h"), artifact_root=local_root, random_seeds=1)
    assert held["metrics"]["protocol"] == "holdout"
    assert held["metrics"]["n_prompts"] == len(bm.load_benchmark("gsm8k", split="eval"))
    with pytest.raises(LeakageError, match="crossfit"):
        evaluate_to_dir(router, "gsm8k", "transfer", str(tmp_path / "t"), artifact_root=local_root, random_seeds=1)
    with pytest.raises(ValueError, match="no holdout protocol"):
        evaluate_to_dir(router, "mt-bench", "holdout", str(tmp_path / "x"), artifact_root=local_root)


# --- own labels, each dataset left out ------------------------------------------------------
_RECIPES = ["lasagne", "sourdough bread", "miso soup", "paella", "ratatouille", "dumplings", "risotto"]
_MATCHES = ["badminton", "water polo", "fencing", "curling", "rugby", "table tennis", "lacrosse"]
_ASKS = ["Give me three tips about {}.", "What should a beginner know about {}?"]


def _two_dataset_labels(root, router_labels_artifact):
    """Own labels from two ingested datasets (own model names): the small model is right on
    every `recipes` prompt and wrong on every `matches` one, in the same wordings, so only a
    router that has seen a dataset's topic can route it."""
    from router_tasks.core.prompts import prompt_id

    rows = []
    for dataset, items, small_ok in (("recipes", _RECIPES, True), ("matches", _MATCHES, False)):
        for item in items:
            for ask in _ASKS:
                text = ask.format(item)
                for model, ok in (("team-large", True), ("team-small", small_ok)):
                    rows.append(
                        dict(
                            prompt_id=prompt_id(text),
                            prompt=text,
                            model=model,
                            score=None,
                            correct=ok,
                            quality=float(ok),
                            source="generated:team-traffic",
                            benchmark=dataset,
                        )
                    )
    return router_labels_artifact(pd.DataFrame(rows), root)


def test_own_labels_left_out_by_dataset_show_what_does_not_transfer(minilm, local_root, router_labels_artifact):
    from router_tasks.evaluation.evaluate import OWN_LEFT_OUT, evaluate_router
    from router_tasks.training.train import train_router

    labels = _two_dataset_labels(local_root, router_labels_artifact)
    router = train_router(
        labels,
        router_type="knn",
        strong_model="team-large",
        weak_model="team-small",
        router_params={"k": 5},
        artifact_root=local_root,
    )
    ev = evaluate_router(router, benchmarks=[], random_seeds=2, artifact_root=local_root)
    store = ArtifactStore(local_root)
    report = store.read_json(f"{ev['key']}/metrics.json")
    own, by_dataset = report["benchmarks"]["own-labels"], report["own_left_out"]
    assert own["protocol"] == "crossfit"  # 28 prompts: k folds by prompt, both topics in every fold's training
    assert by_dataset["protocol"] == "leave-dataset-out" and by_dataset["group_by"] == "benchmark"
    assert by_dataset["n_prompts"] == 28
    assert {d: v["n_prompts"] for d, v in by_dataset["per_group"].items()} == {"matches": 14, "recipes": 14}
    # by prompt the router has seen each topic and routes as well as the oracle; a dataset
    # it never saw, it routes by the other one's pattern: the exact opposite here
    assert own["exact"]["apgr"] == pytest.approx(own["exact"]["oracle_apgr"])
    # and so saves as many strong-model calls at 95% of its quality as the oracle, more than chance
    assert own["exact"]["calls_saved_at_95"] == pytest.approx(own["exact"]["oracle_calls_saved_at_95"])
    assert own["exact"]["calls_saved_at_95"] > own["exact"]["random_calls_saved_at_95"]
    assert by_dataset["exact"]["apgr"] < by_dataset["exact"]["random_apgr"] - 0.2
    assert by_dataset["per_group"]["recipes"]["apgr_exact"] is None  # both models always right: no gap to rank
    scores = store.read_parquet(f"{ev['key']}/scores_{OWN_LEFT_OUT}.parquet")
    assert set(scores["group"]) == {"recipes", "matches"} and len(scores) == 28
    # the router left without `matches` saw only prompts on which both models are right
    assert (
        scores.loc[scores["group"] == "recipes", "strong_win_rate"].mean()
        > scores.loc[scores["group"] == "matches", "strong_win_rate"].mean()
    )
    text = store.read_bytes(f"{ev['key']}/report.md").decode()
    assert "own-labels, each dataset left out (leave-dataset-out)" in text and "| matches | 14 |" in text
    # never part of what publish compares
    assert list(store.read_parquet(f"{ev['key']}/data.parquet")["benchmark"]) == ["own-labels"]


def test_one_own_dataset_is_a_stated_skip_not_a_figure(minilm, local_root, router_labels_artifact):
    from router_tasks.evaluation.evaluate import evaluate_router
    from router_tasks.training.train import train_router

    labels = _two_dataset_labels(local_root, router_labels_artifact)
    df = ArtifactStore(local_root).read_parquet(f"{labels['key']}/data.parquet")
    one = router_labels_artifact(df.assign(benchmark="all-traffic"), local_root)
    router = train_router(
        one,
        router_type="knn",
        strong_model="team-large",
        weak_model="team-small",
        router_params={"k": 5},
        artifact_root=local_root,
    )
    ev = evaluate_router(router, benchmarks=[], random_seeds=2, artifact_root=local_root)
    by_dataset = ArtifactStore(local_root).read_json(f"{ev['key']}/metrics.json")["own_left_out"]
    assert "needs >= 2 categories" in by_dataset["skipped"] and "'all-traffic': 28" in by_dataset["skipped"]


def test_prompt_file_categories_reach_the_labels_and_are_left_out_in_turn(minilm, local_root):
    """The team's prompt file tags each prompt with a category; the labels stage carries it
    (next to the assumed strong rows, which carry it too), the data-quality suite accepts it,
    and the evaluation leaves each category out in turn: one dataset, two kinds of traffic."""
    from router_tasks.core.prompts import prompt_id
    from router_tasks.core.stage import load_table, run_stage
    from router_tasks.data.labels import build_labels
    from router_tasks.data.validate import validate_labels
    from router_tasks.training.train import train_router

    store = ArtifactStore(local_root)
    texts = {
        cat: [ask.format(item) for item in items for ask in _ASKS]
        for cat, items in (("cooking", _RECIPES), ("sport", _MATCHES))
    }
    prompts = pd.DataFrame(
        [
            {"prompt_id": prompt_id(t), "prompt": t, "dataset": "team-traffic", "category": cat}
            for cat, ts in texts.items()
            for t in ts
        ]
    )
    judged = pd.DataFrame(
        [
            {
                "prompt_id": prompt_id(t),
                "model": "team-small",
                "score": 5 if cat == "cooking" else 1,
                "correct": None,
                "failure_reason": None,
            }
            for cat, ts in texts.items()
            for t in ts
        ]
    )
    judged["score"], judged["correct"] = judged["score"].astype("Int64"), judged["correct"].astype("boolean")
    put = lambda name, df: run_stage(
        name,
        "test",
        lambda ctx: ctx.write_table(df),
        config={"n": len(df)},  # noqa: E731
        store=store,
    )
    labels = build_labels(
        put("ingest", prompts),
        put("judge", judged),
        include_routellm=False,
        strong_quality="assume_perfect",
        strong_model="team-large",
        artifact_root=local_root,
    )
    table = load_table(labels, store)
    assert table.groupby("model")["category"].apply(lambda c: c.notna().all()).all()  # both models' rows
    validated = validate_labels(labels, required_models=["team-large", "team-small"], artifact_root=local_root)
    router = train_router(
        validated,
        router_type="knn",
        strong_model="team-large",
        weak_model="team-small",
        router_params={"k": 5},
        artifact_root=local_root,
    )
    ev = evaluate_router(router, benchmarks=[], random_seeds=2, artifact_root=local_root)
    left_out = store.read_json(f"{ev['key']}/metrics.json")["own_left_out"]
    assert left_out["protocol"] == "leave-category-out" and left_out["group_by"] == "category"
    assert {g: v["n_prompts"] for g, v in left_out["per_group"].items()} == {"cooking": 14, "sport": 14}
    assert left_out["exact"]["apgr"] < left_out["exact"]["random_apgr"] - 0.2  # nothing transfers between them
    assert "each category left out (leave-category-out)" in store.read_bytes(f"{ev['key']}/report.md").decode()
