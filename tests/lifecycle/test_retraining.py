"""Retraining helpers: which labels a run uses, and best-of-candidates publishing."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.lifecycle.retraining import (
    LATEST_LABELS_KEY,
    in_type_order,
    publish_best,
    record_labels,
    resolve_labels,
    split_by_device,
)


def _artifact(root, stage, df, tag):
    return run_stage(stage, "test", lambda ctx: ctx.write_table(df), config={"tag": tag}, store=ArtifactStore(root))


def test_resolve_labels_order(local_root):
    a = _artifact(local_root, "labels", pd.DataFrame({"x": [1]}), "a")
    b = _artifact(local_root, "labels", pd.DataFrame({"x": [2]}), "b")
    c = _artifact(local_root, "labels", pd.DataFrame({"x": [3]}), "c")
    with pytest.raises(FileNotFoundError, match="no labels to retrain on"):
        resolve_labels(None, [], artifact_root=local_root)
    assert record_labels(a, artifact_root=local_root) == {"labels": a}
    assert ArtifactStore(local_root).exists(LATEST_LABELS_KEY)
    assert resolve_labels(None, [], artifact_root=local_root)["key"] == a["key"]  # cron: newest recorded
    events = [{"labels": b}, None, {"other": 1}, {"labels": c}]
    assert resolve_labels("", events, artifact_root=local_root)["key"] == c["key"]  # newest event wins
    assert resolve_labels(b["key"], events, artifact_root=local_root)["key"] == b["key"]  # the param wins


def test_publish_best_promotes_the_best_candidate(local_root, random_router):
    def evaluation(apgrs, tag):
        return _artifact(local_root, "evaluate", pd.DataFrame({"benchmark": ["mmlu", "gsm8k"], "apgr": apgrs}), tag)

    routers = [random_router(local_root, f"r{i}") for i in range(3)]
    evals = [evaluation([0.2, 0.4], "e0"), evaluation([0.6, 0.4], "e1"), evaluation([math.nan, math.nan], "e2")]
    d = publish_best(routers, evals, artifact_root=local_root)
    assert d["promoted"] and d["router"]["key"] == routers[1]["key"]  # mean 0.5 beats 0.3; NaN never wins
    assert [c["score"] for c in d["candidates"]][:2] == pytest.approx([0.3, 0.5])
    d = publish_best(routers[:1], evals[:1], artifact_root=local_root)
    assert not d["promoted"]  # 0.3 does not beat the champion's 0.5
    with pytest.raises(ValueError, match="2 routers and 1 evaluations"):
        publish_best(routers[:2], evals[:1], artifact_root=local_root)


def test_router_types_split_by_device_and_merged_back_in_order():
    split = split_by_device(["random", "causal_llm", "knn", "causal_llm"])
    assert split == {
        "cpu": ["random", "knn"],
        "gpu": ["causal_llm", "causal_llm"],
        "order": ["cpu", "gpu", "cpu", "gpu"],
    }
    assert in_type_order(split, ["R", "K"], ["C1", "C2"]) == ["R", "C1", "K", "C2"]
    assert split_by_device(["causal_llm", "knn"], use_gpu=False)["gpu"] == []  # GPU off: all on the CPU
    assert in_type_order(split_by_device(["knn"]), ["K"], []) == ["K"]
    with pytest.raises(ValueError, match="expected 2 CPU and 2 GPU results, got 2 and 1"):
        in_type_order(split, ["R", "K"], ["C1"])
    with pytest.raises(ValueError, match="router_types is empty"):
        split_by_device([])
    with pytest.raises(ValueError, match="unknown router type 'gpt'"):
        split_by_device(["knn", "gpt"])  # before anything trains
