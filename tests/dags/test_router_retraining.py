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

    from router_tasks.core import defaults

    dag = retraining_dag
    tt = dag.timetable
    assert isinstance(tt, AssetOrTimeSchedule)
    assert isinstance(tt.timetable, CronTriggerTimetable) and tt.timetable.expression == defaults.RETRAIN_CRON
    assert [a.uri for a in tt.asset_condition.objects] == [defaults.LABELS_ASSET_URI]
    for order in (
        ["resolve_labels", "train_router_cpu", "evaluate_router_cpu", "evaluate_router", "publish"],
        ["resolve_labels", "train_router_gpu", "evaluate_router_gpu", "evaluate_router"],
        ["train_router_gpu", "trained_routers", "publish"],
    ):
        for up, down in zip(order, order[1:], strict=False):
            assert up in dag.get_task(down).upstream_task_ids, f"{up} -> {down} missing"
    assert "cpu_types" in dag.get_task("train_router_cpu").upstream_task_ids
    assert "gpu_types" in dag.get_task("train_router_gpu").upstream_task_ids
    assert [o.uri for o in dag.get_task("publish").outlets] == [defaults.ROUTER_ASSET_URI]
    assert {"labels", "router_types", "use_gpu", "strong_model", "weak_model", "benchmarks", "metric", "margin"} <= set(
        dag.params
    )


def test_gpu_routers_train_on_the_gpu_queue_and_pool(retraining_dag):
    from datetime import timedelta

    from router_tasks.core import defaults

    gpu, cpu = retraining_dag.get_task("train_router_gpu"), retraining_dag.get_task("train_router_cpu")
    assert (gpu.queue, gpu.pool) == ("gpu", "tela_gpu") == (defaults.GPU_QUEUE, defaults.GPU_POOL)
    assert gpu.execution_timeout == timedelta(hours=defaults.TRAIN_TIMEOUT_HOURS)
    assert (cpu.queue, cpu.pool) == ("default", "default_pool")  # the normal queue and pool
    assert cpu.execution_timeout == gpu.execution_timeout
    egpu, ecpu = retraining_dag.get_task("evaluate_router_gpu"), retraining_dag.get_task("evaluate_router_cpu")
    assert (egpu.queue, egpu.pool) == (defaults.GPU_QUEUE, defaults.GPU_POOL)
    assert (ecpu.queue, ecpu.pool) == ("default", "default_pool")
    assert egpu.execution_timeout == ecpu.execution_timeout == timedelta(hours=defaults.EVALUATE_TIMEOUT_HOURS)


def _labels() -> pd.DataFrame:
    from router_tasks.core.prompts import prompt_id
    from router_tasks.data import routellm as bm

    texts = [f"retraining prompt {i}" for i in range(6)]
    return pd.DataFrame(
        {
            "prompt_id": [prompt_id(t) for t in texts for _ in (0, 1)],
            "prompt": [t for t in texts for _ in (0, 1)],
            "model": [bm.STRONG_MODEL, bm.WEAK_MODEL] * 6,
            "quality": [1.0, 0.0] * 6,
        }
    )


# causal_llm on the tiny in-code model (tests/routers/test_causal_llm.py): seconds on a CPU
TINY_CAUSAL_LLM = {"base_model": "tiny", "epochs": 2, "batch_size": 16, "lr": 0.005, "max_length": 48}


def test_real_run_promotes_then_keeps(retraining_dag, tmp_path, monkeypatch):
    """CPU and GPU router types in one run (no GPU here: the GPU task falls back to the
    CPU, and dag.test ignores queues and pools), results kept in the param's order."""
    from airflow.utils.state import TaskInstanceState

    from router_tasks.core.stage import run_stage
    from router_tasks.core.store import ArtifactStore
    from router_tasks.lifecycle.retraining import record_labels

    root = str(tmp_path / "artifacts")
    store = ArtifactStore(root)
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", root)  # dag.test runs tasks in this process
    labels = run_stage("labels", "test", lambda ctx: ctx.write_table(_labels()), config={"t": "dag"}, store=store)
    record_labels(labels)  # the cron/manual path: newest recorded labels
    conf = {
        "router_types": ["random", "causal_llm", "knn"],
        "benchmarks": ["mt-bench"],
        "router_params": {"causal_llm": TINY_CAUSAL_LLM},
    }

    def states(dr):
        return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}

    def kinds(dr):
        refs = dr.get_task_instance("trained_routers").xcom_pull(task_ids="trained_routers")
        return [store.read_json(f"{r['key']}/router.json")["kind"] for r in refs]

    dr = retraining_dag.test(run_conf=conf)
    assert set(states(dr).values()) == {TaskInstanceState.SUCCESS}, states(dr)
    trained = {
        (ti.task_id, ti.map_index): ti for ti in dr.get_task_instances() if ti.task_id.startswith("train_router_")
    }
    assert sorted(trained) == [("train_router_cpu", 0), ("train_router_cpu", 1), ("train_router_gpu", 0)]
    gpu_ti = trained[("train_router_gpu", 0)]
    assert (gpu_ti.queue, gpu_ti.pool) == ("gpu", "tela_gpu")
    assert kinds(dr) == ["random", "causal_llm", "knn"]  # the param's order: publish breaks ties by it
    champion = json.loads((Path(root) / "champion" / "CHAMPION.json").read_text())
    assert champion["router"]["stage"] == "train"
    from router_tasks.core.stage import load_table

    compared = load_table(dr.get_task_instance("compare_routers").xcom_pull(task_ids="compare_routers"), store)
    assert sorted(compared["kind"]) == ["causal_llm", "knn", "random"]  # every router on one plot and table

    dr = retraining_dag.test(run_conf=conf)  # same labels: everything reused, champion kept
    s = states(dr)
    assert s[("publish", -1)] == TaskInstanceState.SKIPPED
    assert all(v == TaskInstanceState.SUCCESS for k, v in s.items() if k != ("publish", -1)), s

    # use_gpu off: causal_llm trains in the normal task, pinned to the CPU; no GPU task runs
    dr = retraining_dag.test(run_conf={**conf, "router_types": ["causal_llm"], "use_gpu": False})
    s = states(dr)
    assert s[("train_router_gpu", -1)] == TaskInstanceState.SKIPPED  # mapped over no type
    assert (
        s[("train_router_cpu", 0)]
        == s[("trained_routers", -1)]
        == s[("evaluate_router_cpu", 0)]
        == TaskInstanceState.SUCCESS
    ), s
    assert (
        s[("evaluate_router_gpu", -1)] == TaskInstanceState.SKIPPED
        and s[("evaluate_router", -1)] == TaskInstanceState.SUCCESS
    )
    assert dr.state == "success"
    ref = dr.get_task_instance("trained_routers").xcom_pull(task_ids="trained_routers")[0]
    assert store.read_json(f"{ref['key']}/router.json")["params"]["device"] == "cpu"


def test_dag_file_does_not_import_heavy_libraries():
    """Parsing runs often in the DAG processor: torch, transformers, matplotlib stay in tasks."""
    import subprocess
    import sys

    code = (
        f"import sys, runpy; sys.path[:0]=['{REPO}', '{REPO}/plugins']; "
        f"runpy.run_path('{REPO}/dags/router_retraining.py');"
        "heavy=[m for m in ('torch','transformers','great_expectations','sentence_transformers','openai','matplotlib')"
        " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
