"""compare_routers: all evaluated routers on one plot per benchmark, and one table."""

from __future__ import annotations

import pytest

from router_tasks.core.stage import load_table, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.compare import compare_routers
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.training.train import train_router


def test_compare_two_routers(local_root):
    from router_tasks.data.routellm import routellm_training_labels

    store = ArtifactStore(local_root)
    labels = routellm_training_labels().groupby("benchmark").head(100).reset_index(drop=True)
    labels_ref = run_stage("labels", "test", lambda ctx: ctx.write_table(labels), store=store)
    evaluations, keys = [], []
    for seed in (1, 2):
        router = train_router(labels_ref, router_type="random", router_params={"seed": seed}, artifact_root=local_root)
        keys.append(router["key"])
        benches = ["mmlu", "mt-bench"] if seed == 1 else ["mt-bench"]  # mmlu only for one: left out
        evaluations.append(evaluate_router(router, benchmarks=benches, max_prompts=60, artifact_root=local_root))

    ref = compare_routers(evaluations, artifact_root=local_root)
    table = load_table(ref, store)
    assert sorted(table["router"]) == sorted(keys) and set(table["benchmark"]) == {"mt-bench"}
    for ev, key in zip(evaluations, keys, strict=False):
        own = load_table(ev, store).set_index("benchmark").loc["mt-bench"]
        assert table.set_index("router").loc[key, "apgr"] == pytest.approx(own["apgr"])
    png = store.read_bytes(f"{ref['key']}/compare_mt-bench.png")
    assert png[:4] == b"\x89PNG" and not store.exists(f"{ref['key']}/compare_mmlu.png")
    assert "compare_mt-bench.png" in store.read_bytes(f"{ref['key']}/report.md").decode()
    assert compare_routers(evaluations, artifact_root=local_root)["reused"]
    with pytest.raises(ValueError, match="no evaluations"):
        compare_routers([], artifact_root=local_root)
