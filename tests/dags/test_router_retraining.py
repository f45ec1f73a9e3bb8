"""The retraining DAG: parses, is scheduled by the labels Asset OR a weekly cron, publishes
the champion Asset; and one real in-process run (random router, MT-Bench only)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def retraining_dag(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "router_retraining.py"))
    assert bag.import_errors == {}
    dag = bag.get_dag("router_retraining")
    assert dag is not None
    return dag


def test_schedule_assets_and_wiring(retraining_dag):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    from router_tasks import defaults

    dag = retraining_dag
    tt = dag.timetable
    assert isinstance(tt, AssetOrTimeSchedule)
    assert isinstance(tt.timetable, CronTriggerTimetable) and tt.timetable.expression == defaults.RETRAIN_CRON
    assert [a.uri for a in tt.asset_condition.objects] == [defaults.LABELS_ASSET_URI]
    order = ["resolve_labels", "train_router", "evaluate_router", "publish"]
    for up, down in zip(order, order[1:]):
        assert up in dag.get_task(down).upstream_task_ids, f"{up} -> {down} missing"
    assert "router_types" in dag.get_task("train_router").upstream_task_ids
    assert [o.uri for o in dag.get_task("publish").outlets] == [defaults.ROUTER_ASSET_URI]
    assert {"labels", "router_types", "strong_model", "weak_model", "benchmarks", "metric", "margin"} <= set(dag.params)


def _labels() -> pd.DataFrame:
    from router_tasks import benchmarks as bm
    from router_tasks.prompts import prompt_id

    texts = [f"retraining prompt {i}" for i in range(6)]
    return pd.DataFrame({
        "prompt_id": [prompt_id(t) for t in texts for _ in (0, 1)],
        "prompt": [t for t in texts for _ in (0, 1)],
        "model": [bm.STRONG_MODEL, bm.WEAK_MODEL] * 6,
        "quality": [1.0, 0.0] * 6,
    })


def test_real_run_promotes_then_keeps(retraining_dag, tmp_path, monkeypatch):
    from airflow.utils.state import TaskInstanceState

    from router_tasks.retraining import record_labels
    from router_tasks.stage import run_stage
    from router_tasks.store import ArtifactStore

    root = str(tmp_path / "artifacts")
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", root)  # dag.test runs tasks in this process
    labels = run_stage("labels", "test", lambda ctx: ctx.write_table(_labels()), config={"t": "dag"},
                       store=ArtifactStore(root))
    record_labels(labels)  # the cron/manual path: newest recorded labels
    conf = {"router_types": ["random", "knn"], "benchmarks": ["mt-bench"]}

    def states(dr):
        return {ti.task_id: ti.state for ti in dr.get_task_instances()}

    dr = retraining_dag.test(run_conf=conf)
    assert set(states(dr).values()) == {TaskInstanceState.SUCCESS}, states(dr)
    champion = json.loads((Path(root) / "champion" / "CHAMPION.json").read_text())
    assert champion["router"]["stage"] == "train"
    from router_tasks.stage import load_table

    compared = load_table(dr.get_task_instance("compare_routers").xcom_pull(task_ids="compare_routers"), ArtifactStore(root))
    assert sorted(compared["kind"]) == ["knn", "random"]  # both routers on one plot and table

    dr = retraining_dag.test(run_conf=conf)  # same labels: everything reused, champion kept
    s = states(dr)
    assert s["publish"] == TaskInstanceState.SKIPPED
    assert all(v == TaskInstanceState.SUCCESS for k, v in s.items() if k != "publish"), s


def test_dag_file_does_not_import_heavy_libraries():
    """Parsing runs often in the DAG processor: torch, transformers, matplotlib stay in tasks."""
    import subprocess
    import sys

    code = (
        "import sys, runpy; sys.path[:0]=['{r}', '{r}/plugins']; runpy.run_path('{r}/dags/router_retraining.py');"
        "heavy=[m for m in ('torch','transformers','great_expectations','sentence_transformers','openai','matplotlib')"
        " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    ).format(r=REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
