import pandas as pd
import pytest

from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.lifecycle.publish import CHAMPION_KEY, publish_router, read_champion, rollback_champion


def _evaluation(store, apgrs):
    df = pd.DataFrame({"benchmark": list(apgrs), "apgr": list(apgrs.values())})
    return run_stage("evaluate", "test", lambda ctx: ctx.write_table(df), config=apgrs, store=store)


def test_promote_keep_and_rollback(local_root, random_router):
    store = ArtifactStore(local_root)
    r1, r2, r3 = (random_router(store.root, n) for n in ("r1", "r2", "r3"))

    d1 = publish_router(r1, _evaluation(store, {"mmlu": 0.5, "gsm8k": 0.6}), artifact_root=local_root)
    assert d1["promoted"] and d1["reason"] == "no champion yet"
    assert d1["score"] == pytest.approx(0.55)

    d_same = publish_router(r1, _evaluation(store, {"mmlu": 0.5, "gsm8k": 0.6}), artifact_root=local_root)
    assert not d_same["promoted"] and "already the champion" in d_same["reason"]

    d2 = publish_router(r2, _evaluation(store, {"mmlu": 0.7, "gsm8k": 0.6}), margin=0.01, artifact_root=local_root)
    assert d2["promoted"] and read_champion(store)["router"]["key"] == r2["key"]

    before = store.read_bytes(CHAMPION_KEY)
    d3 = publish_router(r3, _evaluation(store, {"mmlu": 0.66, "gsm8k": 0.66}), margin=0.02, artifact_root=local_root)
    assert not d3["promoted"] and "does not beat" in d3["reason"]
    assert store.read_bytes(CHAMPION_KEY) == before  # a losing challenger changes nothing
    assert d3["champion_before"]["router"]["key"] == r2["key"]

    back = rollback_champion(local_root)
    assert back["router"]["key"] == r1["key"] == read_champion(store)["router"]["key"]
    assert len(store.list("champion/decisions/")) == 4


def test_unknown_metric_is_a_clear_error(local_root, random_router):
    store = ArtifactStore(local_root)
    with pytest.raises(ValueError, match="benchmark 'mt-bench' was not evaluated"):
        publish_router(
            random_router(store.root, "x"),
            _evaluation(store, {"mmlu": 0.5}),
            metric="apgr:mt-bench",
            artifact_root=local_root,
        )
    assert read_champion(store) is None


def test_nan_metric_is_never_promoted(local_root, random_router):
    store = ArtifactStore(local_root)
    d = publish_router(
        random_router(store.root, "n"),
        _evaluation(store, {"mmlu": 0.9, "gsm8k": float("nan")}),
        artifact_root=local_root,
    )
    assert not d["promoted"] and "NaN" in d["reason"]
    assert read_champion(store) is None


def _spec_evaluation(store, apgr, spec):
    """An evaluate-like artifact with a data.parquet row and a metrics.json spec."""
    import json

    df = pd.DataFrame({"benchmark": ["own-labels"], "apgr": [apgr]})

    def compute(ctx):
        ctx.write_table(df)
        ctx.write_file("metrics.json", json.dumps({"spec": spec}).encode())

    return run_stage("evaluate", "test", compute, config={"apgr": apgr, "spec": spec}, store=store)


def test_concurrent_publishers_lose_no_decision(any_root, random_router):
    """Publishers racing on one champion pointer: whatever the interleaving, the best router
    ends as champion and every promotion's `previous` is the champion it really replaced."""
    import threading

    store = ArtifactStore(any_root)
    scores = [0.31, 0.72, 0.55, 0.64, 0.47, 0.69]
    jobs = [(random_router(store.root, f"c{i}"), _evaluation(store, {"mmlu": s})) for i, s in enumerate(scores)]
    start = threading.Barrier(len(jobs))
    decisions, errors = [None] * len(jobs), []

    def publish(i):
        try:
            start.wait()
            decisions[i] = publish_router(*jobs[i], artifact_root=any_root)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    best = jobs[scores.index(max(scores))][0]["key"]
    assert read_champion(store)["router"]["key"] == best
    # the promotions form one chain: each replaced exactly the champion before it
    history = [store.read_json(k) for k in store.list("champion/history/")]
    promoted = [d for d in decisions if d["promoted"]]
    assert len(history) == len(promoted)
    replaced = [h["previous"]["key"] if h["previous"] else None for h in history]
    assert len(set(replaced)) == len(replaced)  # no champion was replaced twice (a lost update)
    chain, key = [], best
    by_router = {h["router"]["key"]: h for h in history}
    while key is not None:
        chain.append(key)
        prev = by_router[key]["previous"]
        key = prev["key"] if prev else None
    assert len(chain) == len(history)
    chain_scores = [by_router[k]["score"] for k in chain]
    assert chain_scores == sorted(chain_scores, reverse=True)


def test_champion_on_another_spec_is_not_compared_blindly(local_root, random_router):
    """A champion crowned on a quick spec is re-scored on the challenger's spec, or the
    challenger is refused with the reason; never are unlike scores compared."""
    store = ArtifactStore(local_root)
    quick = {
        "benchmarks": ["mmlu"],
        "max_prompts": 10,
        "num_results": 10,
        "random_seeds": 1,
        "protocol": None,
        "own": False,
        "own_labels": None,
        "scored": ["mmlu"],
    }
    full = {**quick, "max_prompts": None}
    champion = random_router(store.root, "quick-champion")  # its own labels only: it cannot be scored on MMLU
    assert publish_router(champion, _spec_evaluation(store, 0.9, quick), artifact_root=local_root)["promoted"]

    d = publish_router(
        random_router(store.root, "challenger"), _spec_evaluation(store, 0.6, full), artifact_root=local_root
    )
    assert not d["promoted"]
    assert "another evaluation spec" in d["reason"] and "cannot be re-scored" in d["reason"]
    assert read_champion(store)["router"]["key"] == champion["key"]

    # on the same spec the usual comparison applies
    d = publish_router(
        random_router(store.root, "same-spec"), _spec_evaluation(store, 0.95, quick), artifact_root=local_root
    )
    assert d["promoted"] and d["champion_rescored"] is None


def test_quick_champion_is_rescored_on_the_challengers_full_spec(local_root):
    """A champion crowned by a quick run (`max_prompts`) is scored again on the challenger's
    spec before the two are compared; the decision records both of its scores."""
    from router_tasks.data.routellm import routellm_training_labels
    from router_tasks.evaluation.evaluate import evaluate_router
    from router_tasks.training.train import train_router

    labels = routellm_training_labels().groupby("benchmark").head(150).reset_index(drop=True)
    labels_ref = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(labels), store=ArtifactStore(local_root))
    champion = train_router(labels_ref, router_type="random", router_params={"seed": 1}, artifact_root=local_root)
    challenger = train_router(labels_ref, router_type="random", router_params={"seed": 2}, artifact_root=local_root)
    quick = evaluate_router(champion, benchmarks=["mmlu"], max_prompts=25, random_seeds=1, artifact_root=local_root)
    assert publish_router(champion, quick, artifact_root=local_root)["promoted"]

    full = evaluate_router(challenger, benchmarks=["mmlu"], max_prompts=120, random_seeds=1, artifact_root=local_root)
    d = publish_router(challenger, full, artifact_root=local_root)
    rescored = d["champion_rescored"]
    assert rescored is not None and rescored["score_on_own_spec"] == d["champion_before"]["score"]
    store = ArtifactStore(local_root)
    assert (
        store.read_json(f"{rescored['evaluation']['key']}/metrics.json")["spec"]
        == store.read_json(f"{full['key']}/metrics.json")["spec"]
    )
    assert f"{rescored['score']:.4f}" in d["reason"] and "re-scored" in d["reason"]
    assert d["promoted"] == (d["score"] > rescored["score"])


def test_champion_is_rescored_on_the_challengers_own_labels(local_root):
    """Own-labels evaluations on different label sets are different specs: the champion is
    scored again on the challenger's labels (the fixed hash holdout keeps both routers off
    those prompts), then compared."""
    from router_tasks.core.prompts import prompt_id
    from router_tasks.evaluation.evaluate import evaluate_router
    from router_tasks.training.train import train_router

    def own_labels(n):
        rows = []
        for i in range(n):
            text = f"own prompt number {i}"
            for model, q in (("big", 1.0), ("small", float(i % 3 == 0))):
                rows.append(
                    dict(
                        prompt_id=prompt_id(text),
                        prompt=text,
                        model=model,
                        score=None,
                        correct=None,
                        quality=q,
                        source="generated:team",
                        benchmark="own",
                    )
                )
        df = pd.DataFrame(rows)
        return run_stage(
            "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"n": n}, store=ArtifactStore(local_root)
        )

    first, more = own_labels(180), own_labels(240)
    kw = dict(router_type="random", strong_model="big", weak_model="small", artifact_root=local_root)
    champion, challenger = train_router(first, **kw), train_router(more, **kw, router_params={"seed": 3})
    ev = dict(benchmarks=[], random_seeds=1, artifact_root=local_root)
    assert publish_router(champion, evaluate_router(champion, **ev), artifact_root=local_root)["promoted"]
    full = evaluate_router(challenger, **ev)
    d = publish_router(challenger, full, artifact_root=local_root)
    rescored = d["champion_rescored"]
    assert rescored is not None, d["reason"]
    store = ArtifactStore(local_root)
    spec = store.read_json(f"{full['key']}/metrics.json")["spec"]
    assert spec["own_labels"]["key"] == more["key"] and spec["own_plan"]["protocol"] == "holdout"
    assert store.read_json(f"{rescored['evaluation']['key']}/metrics.json")["spec"] == spec
    assert d["promoted"] == (d["score"] > rescored["score"])
