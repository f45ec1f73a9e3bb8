"""Drift detection on traffic windows: a kNN router trained on MMLU prompts; windows of
held-out MMLU traffic must not be flagged (false-alarm rate over 20 windows), GSM8K
traffic must be flagged in the first window; hysteresis, cooldown and recalibration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import load_router
from router_tasks.serving import drift
from router_tasks.serving.traffic import TrafficLog, export_window, read_window, resolve_source
from router_tasks.training.train import train_router

BIG, SMALL = "orca-70b", "minnow-7b"  # our own model names
FAST = {"permutations": 200, "max_sample": 200}
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def mmlu_world(tmp_path_factory, minilm):
    from router_tasks.data.routellm import load_benchmark

    root = str(tmp_path_factory.mktemp("drift") / "artifacts")
    mm = load_benchmark("mmlu")
    order = np.random.default_rng(1).permutation(len(mm))
    train, rest = mm.iloc[order[:500]], mm.iloc[order[500:]]
    rows = [
        dict(
            prompt_id=r.prompt_id,
            prompt=r.prompt,
            model=m,
            score=None,
            correct=bool(q),
            quality=float(q),
            source="test:drift",
            benchmark="mmlu",
        )
        for r in train.itertuples()
        for m, q in ((BIG, r.strong_quality), (SMALL, r.weak_quality))
    ]
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    labels = run_stage(
        "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"t": "drift"}, store=ArtifactStore(root)
    )
    ref = train_router(
        labels, router_type="knn", strong_model=BIG, weak_model=SMALL, router_params={"k": 20}, artifact_root=root
    )
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref})
    router = load_router(ref, ArtifactStore(root))
    return {"root": root, "router": router, "key": ref["key"], "held_out": rest["prompt"].tolist()}


def write_traffic(root, router, prompts, end, key=None):
    """Log `prompts` as gateway traffic spread over the hour before `end`."""
    log = TrafficLog(ArtifactStore(root), flush_s=3600)
    scores = router.strong_win_rate(prompts)
    for i, (p, s) in enumerate(zip(prompts, scores, strict=False)):
        t = end - timedelta(minutes=59) + timedelta(seconds=3500 * i / max(len(prompts), 1))
        log.append(
            {
                "time": t,
                "prompt": p,
                "policy": "tela-auto",
                "router_key": key or router.artifact_key,
                "score": float(s),
                "model": BIG,
                "status": 200,
            }
        )
    log.close()


def test_in_distribution_windows_are_not_flagged(mmlu_world, record_property):
    w = mmlu_world
    flags = []
    for i in range(20):
        end = T0 + timedelta(hours=i + 1)
        write_traffic(w["root"], w["router"], w["held_out"][i * 60 : (i + 1) * 60], end)
        report = drift.read_report(
            drift.drift_report(
                read_window(ArtifactStore(w["root"]), end - timedelta(hours=1), end),
                settings={**FAST, "plot": False},
                artifact_root=w["root"],
            ),
            w["root"],
        )
        assert report["n_prompts"] == 60
        flags.append(report["verdict"] != "ok")
    rate = float(np.mean(flags))
    record_property("false_alarm_rate", rate)
    print(f"false-alarm rate over 20 in-distribution windows: {rate:.0%}")
    assert rate <= 0.05


def test_gsm8k_traffic_is_flagged_in_the_first_window_with_hysteresis_and_cooldown(mmlu_world):
    from router_tasks.data.routellm import gsm8k_test_questions

    w = mmlu_world
    gsm = gsm8k_test_questions()["question"].tolist()
    base = T0 + timedelta(days=3)
    store = ArtifactStore(w["root"])
    store.delete(drift.STATE_KEY)

    def window(prompts, hour):
        end = base + timedelta(hours=hour)
        write_traffic(w["root"], w["router"], prompts, end)
        return drift.check_latest_window(window_end=end, settings=FAST, artifact_root=w["root"])

    first = window(gsm[:60], 1)
    assert first["action"] == "retrain" and first["evidence"]["verdict"] == "drift"
    assert first["evidence"]["checks"]["embedding"]["p_value"] < 0.01
    assert store.exists(first["evidence"]["report"]["key"] + "/drift.png")
    # still drifting an hour later: no second event inside the cooldown
    assert window(gsm[60:120], 2)["action"] == "none"
    # back in distribution: the state clears only after 3 clear windows in a row
    states = [window(w["held_out"][3000 + 60 * i : 3060 + 60 * i], 3 + i)["in_drift"] for i in range(3)]
    assert states == [True, True, False]
    # after the cooldown, drift again is a new event
    again = drift.check_latest_window(window_end=base + timedelta(hours=30), settings=FAST, artifact_root=w["root"])
    assert again["evidence"]["verdict"] == "insufficient" and again["action"] == "none"  # no traffic then
    later = window(gsm[120:180], 31)
    assert later["action"] == "retrain"

    # the event's window becomes the next labeling run's source
    req = drift.relabel_request(first["evidence"], sample=25, artifact_root=w["root"])
    exported = pd.read_json(req["source"], lines=True)
    assert len(exported) == 25 and set(exported["prompt"]) <= set(gsm[:60])
    uri = resolve_source(f"traffic://{first['window'][0]}/{first['window'][1]}", store)
    assert set(pd.read_json(uri, lines=True)["prompt"]) == set(gsm[:60])


def test_strong_share_drift_alone_recalibrates(mmlu_world):
    from router_tasks.evaluation.calibration import calibrate_router, read_calibration

    w = mmlu_world
    store = ArtifactStore(w["root"])
    store.delete(drift.STATE_KEY)
    held = w["held_out"][5000:5400]
    scores = w["router"].strong_win_rate(held)
    # a calibration sample of the easiest prompts: its threshold sends far more than 30%
    # of real traffic to the strong model
    easy = [held[i] for i in np.argsort(scores)[:150]]
    calibrate_router(w["key"], easy, 0.3, artifact_root=w["root"])
    end = T0 + timedelta(days=10)
    traffic_prompts = w["held_out"][6000:6120]
    write_traffic(w["root"], w["router"], traffic_prompts, end)
    decision = drift.check_latest_window(window_end=end, settings=FAST, artifact_root=w["root"])
    share = decision["evidence"]["checks"]["strong_share"]
    assert decision["evidence"]["verdict"] == "share_drift", decision["evidence"]["checks"]
    assert decision["action"] == "recalibrate" and share["share"] > share["target"] + 0.1

    new = drift.recalibrate_on_traffic(
        read_window(store, end - timedelta(hours=1), end), w["key"], artifact_root=w["root"]
    )
    cal = read_calibration(new, w["root"])
    assert cal["target_strong_share"] == 0.3 and abs(cal["achieved_strong_share"] - 0.3) < 0.05
    # the gateway's lookup now finds the new calibration
    from router_tasks.serving.decisions import latest_calibration

    assert latest_calibration(store, w["key"])[0] == new["key"]


def test_export_needs_prompt_text(tmp_path):
    root = str(tmp_path / "a")
    log = TrafficLog(ArtifactStore(root), keep_prompts=False, flush_s=3600)
    log.append({"time": T0, "prompt": "secret user text", "policy": "tela-auto", "model": BIG, "status": 200})
    log.close()
    df = read_window(ArtifactStore(root), T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    assert len(df) == 1 and pd.isna(df["prompt"].iloc[0]) and df["prompt_id"].iloc[0]
    with pytest.raises(ValueError, match="holds no prompt text"):
        export_window(ArtifactStore(root), T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    with pytest.raises(ValueError, match="expected traffic://<from>/<to>"):
        resolve_source("traffic://yesterday", ArtifactStore(root))


def test_mmd_permutation_test_has_its_nominal_size():
    rng = np.random.default_rng(0)
    p = [
        drift.mmd_permutation_test(rng.normal(size=(40, 8)), rng.normal(size=(50, 8)), 200, seed=i)["p_value"]
        for i in range(40)
    ]
    assert np.mean(np.array(p) < 0.05) <= 0.15  # ~5% under the null
    shifted = drift.mmd_permutation_test(rng.normal(size=(40, 8)), rng.normal(0.8, 1, size=(50, 8)), 200)
    assert shifted["p_value"] < 0.01


def test_a_traffic_window_is_a_pipeline_source(tmp_path):
    """`router_pipeline`'s source may be a window of the gateway's traffic log: ingest reads
    the window's distinct prompts, and a window with nothing in it is a clear error."""
    from router_tasks.core.stage import load_table
    from router_tasks.pipeline import ingest_source

    root = str(tmp_path / "artifacts")
    log = TrafficLog(ArtifactStore(root))
    for i, text in enumerate(["What is 2 + 2?", "Name a prime above 10.", "What is 2 + 2?"]):
        log.append({"time": T0 + timedelta(minutes=i), "prompt": text, "model": "m", "status": 200})
    log.close()
    ref = ingest_source(
        f"traffic://{(T0 - timedelta(minutes=1)).isoformat()}/{(T0 + timedelta(minutes=5)).isoformat()}",
        artifact_root=root,
    )
    prompts = load_table(ref, ArtifactStore(root))
    assert sorted(prompts["prompt"]) == ["Name a prime above 10.", "What is 2 + 2?"]
    with pytest.raises(ValueError, match="holds no prompt"):
        ingest_source(
            f"traffic://{(T0 + timedelta(hours=5)).isoformat()}/{(T0 + timedelta(hours=6)).isoformat()}",
            artifact_root=root,
        )
