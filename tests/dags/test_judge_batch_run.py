"""judge_mode=batch through Airflow: the deferrable OpenAITriggerBatchOperator against a
real HTTP server speaking the Files + Batch API, then the same judge stage as online."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_batch_mode_dag_run_judges_through_the_batch_api(airflow_db, tmp_path, monkeypatch):
    from airflow.models import DagBag

    from router_tasks.core.stage import load_table, read_manifest
    from router_tasks.core.store import ArtifactStore
    from tests.openai_test_server import ScriptedOpenAIServer, last_user_text

    source = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Describe colour number {i}.", "reference_answer": f"Colour {i} is nice."} for i in range(3)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = str(tmp_path / "artifacts")

    monkeypatch.setenv("TELA_BATCH_POLL_SECONDS", "0.2")  # read when the DAG file is parsed
    dag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py")).get_dag("router_pipeline")
    with (
        ScriptedOpenAIServer(lambda body: f"An answer to: {last_user_text(body)}") as oss,
        ScriptedOpenAIServer(lambda body: "Close to the reference.\n[[4]]", batch_polls=1) as judge,
    ):
        monkeypatch.setenv(
            "AIRFLOW_CONN_TELA_TEST_BATCH",
            json.dumps({"conn_type": "openai", "host": judge.base_url, "password": "sk-batch-test"}),
        )
        monkeypatch.setenv("TELA_ARTIFACT_ROOT", root)
        conf = {
            "source": str(source),
            "models": [{"name": "oss", "model": "oss-1", "base_url": oss.base_url}],
            "judge": {
                "name": "judge",
                "model": "judge-1",
                "base_url": judge.base_url,
                "price_input_per_m": 5.0,
                "price_output_per_m": 15.0,
            },
            "judge_mode": "batch",
            "judge_batch_conn_id": "tela_test_batch",
            "reference_model": None,
            "routellm_max_prompts": 40,
            "eval_max_prompts": 40,
            "min_rows_per_model": 2,
        }
        dr = dag.test(run_conf=conf)
        states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert dr.state == "success", states
        assert states["prepare_judge_batch"] == states["judge_batch_run"] == states["collect_judge_batch"] == "success"
        assert judge.count() == 0 and judge.batch_lines == 3  # every verdict bought through the batch
        assert oss.count() == 3
        refs = {
            ti.task_id: ti.xcom_pull(task_ids=ti.task_id)
            for ti in dr.get_task_instances()
            if ti.task_id in ("judge_answers", "cost_ledger")
        }

    store = ArtifactStore(root)
    judged = load_table(refs["judge_answers"], store)
    assert judged["score"].tolist() == [4, 4, 4] and judged["failure_reason"].isna().all()
    ledger = load_table(refs["cost_ledger"], store).set_index("stage")
    assert ledger.loc["judge_batch", "calls_now"] == 3 and ledger.loc["judge", "calls_now"] == 0
    assert ledger.loc["judge_batch", "dollars_now"] > 0
    assert read_manifest(store, refs["judge_answers"])["stats"]["cached"] == 3
    assert "Cost ledger" in store.read_bytes("runs/latest.md").decode()
