"""An endpoint's key from an Airflow connection reaches the library as an env variable."""

from __future__ import annotations

import json
import os

from router_tasks.core.endpoints import Endpoint
from router_tasks.labeling.generate import generate_answers
from tests.openai_test_server import ScriptedOpenAIServer, write_prompts

SECRET = "sk-from-an-airflow-connection-1234"


def test_endpoint_key_from_a_connection(airflow_db, local_root, monkeypatch):
    from tela_connections import export_connections  # plugins/

    monkeypatch.setenv("AIRFLOW_CONN_TELA_TEST_LLM", json.dumps({"conn_type": "openai", "password": SECRET}))
    monkeypatch.delenv("TELA_CONN_KEY", raising=False)
    with ScriptedOpenAIServer(lambda body: "hi", api_key=SECRET) as srv:
        model = {
            "name": "m",
            "model": "m",
            "base_url": srv.base_url,
            "api_key_env": "TELA_CONN_KEY",
            "conn_id": "tela_test_llm",
        }
        export_connections({"params": {"models": [model], "judge": None, "reference_model": None}})
        assert os.environ["TELA_CONN_KEY"] == SECRET
        ref = generate_answers(
            write_prompts(local_root, [{"prompt": "hello"}]), models=[model], artifact_root=local_root
        )
        assert ref["rows"] == 1 and srv.auth_headers == [f"Bearer {SECRET}"]
    # the connection's name is runtime plumbing: it does not change answers or artifact keys
    assert "conn_id" not in Endpoint.from_dict(model).output_config()
