"""A pipeline run whose endpoint key is missing fails at the first task that calls the
endpoint, on its first try (LLM tasks retry four times otherwise), and the failure names the
endpoint, the environment variable and the Airflow connection the key was looked for in."""

from __future__ import annotations

from pathlib import Path

import pytest

from openai_test_server import ScriptedOpenAIServer

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_missing_endpoint_key_fails_the_task_at_once(airflow_db, tmp_path, monkeypatch):
    from airflow.models import DagBag

    from tela_alerts import XCOM_KEY

    dag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py")).get_dag("router_pipeline")
    assert dag.get_task("generate_part").retries > 0  # what the fail-fast path skips
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("KESTREL_KEY", raising=False)
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        '{"prompt": "What is 2 + 2?", "reference_answer": "4"}\n'
        '{"prompt": "Name a prime number.", "reference_answer": "7"}\n'
    )
    with ScriptedOpenAIServer(lambda body: "an answer") as srv:
        model = {
            "name": "kestrel-large",
            "model": "kestrel-large",
            "base_url": srv.base_url,
            "api_key_env": "KESTREL_KEY",
            "conn_id": "kestrel_conn_absent",
        }
        conf = {
            "source": str(source),
            "models": [model],
            "judge": {**model, "name": "kestrel-judge"},
            "reference_model": None,
            "include_routellm": False,
            "strong_model": "kestrel-large",
            "weak_model": "kestrel-small",
        }
        dr = dag.test(run_conf=conf)
        assert srv.count() == 0  # nothing was sent without a key
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    part = tis["generate_part"]
    assert dr.state == "failed"
    assert part.state == "failed" and part.try_number == 1, (part.state, part.try_number)
    record = part.xcom_pull(task_ids="generate_part", key=XCOM_KEY, map_indexes=part.map_index)
    assert record["error_type"] == "MissingEndpointKey", record
    for named in ("'kestrel-large'", "KESTREL_KEY", "'kestrel_conn_absent'"):
        assert named in record["message"], (named, record["message"])
