"""Threshold calibration: hand-computed thresholds, and the stored artifact with a real
random router from the real train stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.stage import load_table, read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation.calibration import calibrate_router, read_calibration
from router_tasks.routers import RandomRouter
from router_tasks.routing.thresholds import threshold_for_share
from router_tasks.training.train import train_router

STRONG, WEAK = bm.STRONG_MODEL, bm.WEAK_MODEL


@pytest.mark.parametrize(
    "target, threshold, share",
    [
        (0.4, 0.9, 0.2),  # 0.2 and 0.6 are equally near: the cheaper one
        (0.5, 0.8, 0.6),  # the tie at 0.8 enters together: 3 of 5
        (0.8, 0.3, 0.8),
        (1.0, 0.1, 1.0),
        (0.05, None, 0.0),  # nearer 0 than 0.2: above the maximum, nobody goes strong
    ],
)
def test_threshold_for_share_hand_computed(target, threshold, share):
    scores = [0.8, 0.1, 0.9, 0.3, 0.8]
    t, achieved = threshold_for_share(scores, target)
    assert achieved == pytest.approx(share)
    assert np.mean(np.asarray(scores) >= t) == pytest.approx(achieved)  # the rule it states
    if threshold is None:
        assert t > 0.9 and t == pytest.approx(0.9)
    else:
        assert t == threshold


def test_threshold_for_share_rejects_bad_input():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        threshold_for_share([0.1], 1.5)
    with pytest.raises(ValueError, match="empty"):
        threshold_for_share([], 0.5)
    with pytest.raises(ValueError, match="#1 is nan"):
        threshold_for_share([0.1, float("nan")], 0.5)


def _random_router(root: str) -> dict:
    """A random router trained on four labelled prompts (its scores are a hash of the text)."""
    from router_tasks.core.prompts import prompt_id

    texts = [f"training prompt {i}" for i in range(4)]
    labels = pd.DataFrame(
        {
            "prompt_id": [prompt_id(t) for t in texts for _ in (0, 1)],
            "prompt": [t for t in texts for _ in (0, 1)],
            "model": [STRONG, WEAK] * 4,
            "quality": [1.0, 0.0] * 4,
        }
    )
    labels_ref = run_stage(
        "labels", "test", lambda ctx: ctx.write_table(labels), config={"t": "cal"}, store=ArtifactStore(root)
    )
    return train_router(labels_ref, router_type="random", artifact_root=root)


def test_calibrate_random_router_stored_with_router(local_root, tmp_path):
    store = ArtifactStore(local_root)
    router = _random_router(local_root)

    sample = [f"user prompt {i}" for i in range(40)]
    ref = calibrate_router(router, sample, 0.25, artifact_root=local_root)
    cal = read_calibration(ref, artifact_root=local_root)
    # known answer: the random router's scores are a fixed hash of each prompt
    scores = RandomRouter([STRONG, WEAK], STRONG, WEAK, {"seed": 0}).strong_win_rate(sample)
    assert cal["achieved_strong_share"] == pytest.approx(0.25)  # 40 distinct scores: exactly 10
    assert cal["threshold"] == pytest.approx(np.sort(scores)[::-1][9])
    assert cal["routellm_threshold"] == pytest.approx(np.percentile(scores, 75))
    assert cal["router"]["key"] == router["key"] and cal["n_prompts"] == 40
    table = load_table(ref, store)
    assert int(table["to_strong"].sum()) == 10
    assert read_manifest(store, ref)["inputs"]["router"]["key"] == router["key"]  # references the router

    # same sample from a file, same result; the same call again is reused
    path = tmp_path / "sample.jsonl"
    pd.DataFrame({"prompt": sample}).to_json(path, orient="records", lines=True)
    again = calibrate_router(router, str(path), 0.25, artifact_root=local_root)
    assert again["reused"] is True and again["key"] == ref["key"]
    other = calibrate_router(router, sample, 0.5, artifact_root=local_root)
    assert read_calibration(other, artifact_root=local_root)["achieved_strong_share"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="expected a calibrate artifact"):
        read_calibration(router, artifact_root=local_root)


def test_target_for_budget_hand_computed():
    from router_tasks.routing.thresholds import target_for_budget

    # three prompts, three models; prices per call
    quality = pd.DataFrame({"cheap": [0.9, 0.2, 0.5], "mid": [0.95, 0.6, 0.7], "big": [1.0, 0.9, 0.95]})
    prices = {"cheap": 1.0, "mid": 4.0, "big": 10.0}
    # budget 1: only all-cheap is affordable -> targets up to 0.2 keep every prompt on cheap
    t, choice, cost = target_for_budget(quality, prices, 1.0)
    assert (t, list(choice), cost) == (0.2, ["cheap"] * 3, 1.0)
    # budget 3: target 0.5 -> cheap, mid, cheap = 6/3 = 2; 0.6 -> cheap, mid, mid = 9/3 = 3;
    # 0.7 -> cheap, big, mid = 15/3 = 5 (over): 0.6 is the largest affordable target
    t, choice, cost = target_for_budget(quality, prices, 3.0)
    assert (t, list(choice), cost) == (0.6, ["cheap", "mid", "mid"], 3.0)
    # a large budget buys the highest target
    t, choice, cost = target_for_budget(quality, prices, 100.0)
    assert t == 1.0 and list(choice) == ["big", "big", "big"] and cost == 10.0


def test_calibrate_budget_stored_with_router(local_root):
    from router_tasks.evaluation.calibration import calibrate_budget

    router = _random_router(local_root)
    sample = [f"user prompt {i}" for i in range(30)]
    prices = {STRONG: 10.0, WEAK: 1.0}
    cheap = read_calibration(
        calibrate_budget(router, sample, prices, 1.0, artifact_root=local_root), artifact_root=local_root
    )
    rich = read_calibration(
        calibrate_budget(router, sample, prices, 6.0, artifact_root=local_root), artifact_root=local_root
    )
    assert cheap["achieved_cost_per_prompt"] <= 1.0 and rich["achieved_cost_per_prompt"] <= 6.0
    assert rich["target_quality"] >= cheap["target_quality"]
    assert rich["share_by_model"][STRONG] > cheap["share_by_model"][STRONG]
    with pytest.raises(ValueError, match="no price for model"):
        calibrate_budget(router, sample, {STRONG: 1.0}, 1.0, artifact_root=local_root)
