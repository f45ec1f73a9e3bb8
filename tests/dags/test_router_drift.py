"""The drift DAGs: router_drift runs hourly and emits the drift Asset on shifted traffic;
that Asset schedules router_drift_relabel, which starts router_pipeline on the traffic sample."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from factories import labels_table

REPO = Path(__file__).resolve().parents[2]
BIG, SMALL = "orca-70b", "minnow-7b"


@pytest.fixture(scope="module")
def bag(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "router_drift.py"))
    assert bag.import_errors == {}
    return bag


def test_schedules_and_wiring(bag):
    from airflow.sdk import CronTriggerTimetable

    from router_tasks.serving.drift import DRIFT_ASSET_URI

    d = bag.get_dag("router_drift")
    assert isinstance(d.timetable, CronTriggerTimetable) and d.timetable.expression == "0 * * * *"
    assert [o.uri for o in d.get_task("announce_drift").outlets] == [DRIFT_ASSET_URI]
    assert (
        {"check_window"}
        == d.get_task("announce_drift").upstream_task_ids
        == d.get_task("recalibrate").upstream_task_ids
    )
    relabel = bag.get_dag("router_drift_relabel")
    assert [a.uri for a in relabel.timetable.asset_condition.objects] == [DRIFT_ASSET_URI]
    trigger = relabel.get_task("label_traffic")
    assert trigger.trigger_dag_id == "router_pipeline" and "pipeline_conf" in trigger.upstream_task_ids


def _router(root, minilm_prompts):
    from router_tasks.core.stage import run_stage
    from router_tasks.core.store import ArtifactStore
    from router_tasks.training.train import train_router

    df = labels_table(minilm_prompts, lambda i, _: {BIG: True, SMALL: i % 3 == 0}, benchmark="mmlu")
    labels = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(df), store=ArtifactStore(root))
    ref = train_router(
        labels, router_type="knn", strong_model=BIG, weak_model=SMALL, router_params={"k": 10}, artifact_root=root
    )
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref})
    return ref


def test_shifted_traffic_emits_the_drift_event_that_starts_labeling(bag, tmp_path, monkeypatch, minilm):
    from airflow.models import DagRun
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    from router_tasks.core.store import ArtifactStore
    from router_tasks.data.routellm import gsm8k_test_questions, load_benchmark
    from router_tasks.serving.drift import DRIFT_ASSET_URI
    from router_tasks.serving.traffic import TrafficLog

    root = str(tmp_path / "artifacts")
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", root)  # dag.test runs tasks in this process
    mmlu = load_benchmark("mmlu")["prompt"].tolist()[:300]
    _router(root, mmlu)
    end = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    log = TrafficLog(ArtifactStore(root), flush_s=3600)
    for i, q in enumerate(gsm8k_test_questions()["question"].tolist()[:50]):
        log.append(
            {"time": end - timedelta(minutes=50 - i), "prompt": q, "policy": "tela-auto", "model": BIG, "status": 200}
        )
    log.close()

    def states(dr):
        return {ti.task_id: ti.state for ti in dr.get_task_instances()}

    conf = {"window_end": end.isoformat(), "relabel_sample": 20, "settings": {"permutations": 200}}
    dr = bag.get_dag("router_drift").test(run_conf=conf)
    s = states(dr)
    assert s == {
        "check_window": TaskInstanceState.SUCCESS,
        "recalibrate": TaskInstanceState.SKIPPED,
        "announce_drift": TaskInstanceState.SUCCESS,
    }, s
    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.asset.uri == DRIFT_ASSET_URI]
        assert len(events) == 1
        extra = events[0].extra
    assert extra["evidence"]["verdict"] == "drift" and extra["evidence"]["checks"]["embedding"]["p_value"] < 0.01
    sample = pd.read_json(extra["relabel"]["source"], lines=True)
    assert len(sample) == 20

    # the event's consumer: it starts router_pipeline on the exported sample
    dr2 = bag.get_dag("router_drift_relabel").test(
        run_conf={"pipeline_conf": {"include_routellm": False, "sample": 20}}
    )
    assert states(dr2) == {"pipeline_conf": TaskInstanceState.SUCCESS, "label_traffic": TaskInstanceState.SUCCESS}
    with create_session() as session:
        # the newest run: other tests' router_pipeline runs share this metadata DB
        runs = session.query(DagRun).filter(DagRun.dag_id == "router_pipeline").order_by(DagRun.id).all()
        assert runs and runs[-1].conf["source"] == extra["relabel"]["source"]
        assert runs[-1].conf["include_routellm"] is False

    # a scheduled relabel run (no conf): the champion's recorded endpoints, judge and pair,
    # under the team's Variable, never the demo's defaults; the run says where each came from
    store = ArtifactStore(root)
    champion = store.read_json("champion/CHAMPION.json")
    own = [
        {
            "name": m,
            "model": m,
            "base_url": "https://llm.orca.test/v1",
            "api_key_env": "ORCA_KEY",
            "conn_id": "orca_llm",
        }
        for m in (BIG, SMALL)
    ]
    recorded = {
        "models": own,
        "judge": {**own[0], "name": "orca-judge"},
        "reference_model": None,
        "strong_model": BIG,
        "weak_model": SMALL,
        "include_routellm": False,
    }
    store.write_json("champion/CHAMPION.json", {**champion, "settings": recorded})
    monkeypatch.setenv("AIRFLOW_VAR_TELA_LOOP_SETTINGS", json.dumps({"max_tokens": 48}))
    dr3 = bag.get_dag("router_drift_relabel").test()
    assert states(dr3)["label_traffic"] == TaskInstanceState.SUCCESS, states(dr3)
    with create_session() as session:
        conf = session.query(DagRun).filter(DagRun.dag_id == "router_pipeline").order_by(DagRun.id).all()[-1].conf
    assert conf["source"] == extra["relabel"]["source"]
    assert conf["models"] == own and conf["judge"]["name"] == "orca-judge" and conf["reference_model"] is None
    assert (conf["strong_model"], conf["weak_model"], conf["max_tokens"]) == (BIG, SMALL, 48)
    where = dr3.get_task_instance("pipeline_conf").xcom_pull(task_ids="pipeline_conf", key="settings_from")
    assert where["models"] == f"champion {champion['router']['key']}"
    assert where["max_tokens"] == "Variable tela_loop_settings" and where["judge_mode"] == "library defaults"

    # the next hour, still drifting: hysteresis + cooldown, no second event
    dr = bag.get_dag("router_drift").test(run_conf={**conf, "window_end": (end + timedelta(minutes=30)).isoformat()})
    assert states(dr)["announce_drift"] == TaskInstanceState.SKIPPED


def test_dag_file_does_not_import_heavy_libraries():
    """Parsing runs often in the DAG processor: torch, openai, matplotlib stay in tasks."""
    import subprocess
    import sys

    code = (
        f"import sys, runpy; sys.path[:0]=['{REPO}', '{REPO}/plugins']; runpy.run_path('{REPO}/dags/router_drift.py');"
        "heavy=[m for m in ('torch','transformers','sentence_transformers','openai','matplotlib','starlette')"
        " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
