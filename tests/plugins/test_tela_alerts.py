"""Failure alerts end to end: a real failing run of `router_pipeline` (bad input, so ingest
fails before any model is called) sends its alert to a local HTTP webhook started here,
and leaves the artifact store as it was."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))

import tela_alerts  # noqa: E402


@pytest.fixture
def webhook():
    """A real HTTP server on a free loopback port that records each JSON body POSTed."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "content_type": self.headers["Content-Type"], "json": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/tela", received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pipeline_dag(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("router_pipeline")
    assert dag.on_failure_callback, "router_pipeline must have the DAG-level failure alert"
    return dag


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def populated_root(tmp_path, monkeypatch):
    """An artifact store that already holds an artifact and a champion pointer."""
    import pandas as pd

    from router_tasks.core.stage import run_stage
    from router_tasks.core.store import ArtifactStore

    root = tmp_path / "artifacts"
    table = pd.DataFrame({"prompt_id": ["a1"], "prompt": ["What is 2 + 2?"], "dataset": ["earlier"]})
    run_stage("ingest", "earlier", lambda ctx: ctx.write_table(table), config={}, store=ArtifactStore(str(root)))
    ArtifactStore(str(root)).write_json("champion/CHAMPION.json", {"router": {"key": "stages/train/abc"}, "score": 0.5})
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", str(root))
    return root


def _run(dag, source):
    dr = dag.test(run_conf={"source": str(source)})
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr, states


def test_bad_input_fails_the_run_alerts_and_changes_nothing(
    pipeline_dag, populated_root, webhook, tmp_path, monkeypatch
):
    url, received = webhook
    monkeypatch.setenv("TELA_ALERTS", json.dumps({"notifier": "webhook", "url": url}))
    bad = tmp_path / "broken.jsonl"
    bad.write_bytes(b'{"prompt": "fine"}\n{"prompt": \n')
    before = _snapshot(populated_root)

    dr, states = _run(pipeline_dag, bad)

    assert dr.state == "failed"
    assert states["ingest_prompts"] == "failed"
    assert states["generate_answers"] == "upstream_failed"  # no model was called
    assert _snapshot(populated_root) == before  # byte for byte

    assert len(received) == 1
    hit = received[0]
    assert hit["path"] == "/hooks/tela" and hit["content_type"] == "application/json"
    p = hit["json"]
    assert (p["dag_id"], p["run_id"], p["stage"]) == ("router_pipeline", dr.run_id, "ingest_prompts")
    assert p["event"] == "tela.pipeline_failure" and p["error_type"] == "InputDataError"
    assert "broken.jsonl: line 2: malformed JSON" in p["error"]
    assert f"run {dr.run_id}, stage ingest_prompts" in p["text"]


def test_data_quality_failure_alert_names_rules_numbers_and_data_docs(
    pipeline_dag, populated_root, webhook, tmp_path, monkeypatch
):
    url, received = webhook
    monkeypatch.setenv("TELA_ALERTS", json.dumps({"notifier": "webhook", "url": url}))
    # 3 of 4 prompts are longer than the prompts suite allows (32,000 characters) but under
    # ingest's hard limit: they are quarantined, and 25% kept is under the 95% threshold.
    long = tmp_path / "long.jsonl"
    long.write_text(
        "".join(json.dumps({"prompt": f"{i} " + "x" * 40_000}) + "\n" for i in range(3))
        + json.dumps({"prompt": "a normal question"})
        + "\n",
        encoding="utf-8",
    )
    before = _snapshot(populated_root)

    dr, states = _run(pipeline_dag, long)

    assert dr.state == "failed" and states["ingest_prompts"] == "failed"
    after = _snapshot(populated_root)
    assert {k: after[k] for k in before} == before  # nothing already stored changed
    new = set(after) - set(before)
    assert new and all(k.startswith("quality/ingest/") for k in new)  # only the failure report

    (hit,) = received
    p = hit["json"]
    assert p["event"] == "tela.data_quality_failure" and p["error_type"] == "DataQualityError"
    assert (p["dag_id"], p["run_id"], p["stage"]) == ("router_pipeline", dr.run_id, "ingest_prompts")
    rules = {f["rule"]: f for f in p["failed_expectations"]}
    assert rules["kept_share_at_least"]["observed"] == 0.25
    assert rules["kept_share_at_least"]["kwargs"] == {"min_value": 0.95}
    assert rules["prompt_length_within_bounds"]["unexpected_count"] == 3
    docs = Path(p["data_docs"])
    assert docs.is_file() and str(docs).startswith(str(populated_root / "quality" / "ingest"))
    assert "prompt length within bounds" in docs.read_text()
    assert "kept_share_at_least: observed 0.25" in p["text"] and f"Data Docs: {docs}" in p["text"]


def test_notifier_choice_from_config(monkeypatch):
    payload = {
        "text": "t",
        "event": "tela.data_quality_failure",
        "dag_id": "d",
        "stage": "s",
        "error": "e",
        "failed_expectations": [],
    }
    n = tela_alerts.make_notifier({"notifier": "slack", "webhook_url": "http://127.0.0.1:9/x"}, payload)
    assert isinstance(n, tela_alerts.WebhookNotifier) and n.slack
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    n = tela_alerts.make_notifier({"notifier": "smtp", "to": ["ops@example.com"], "conn_id": "smtp_alerts"}, payload)
    assert isinstance(n, SmtpNotifier) and n.smtp_conn_id == "smtp_alerts" and "d / s" in n.subject
    assert tela_alerts.make_notifier({"notifier": "none"}, payload) is None
    monkeypatch.setenv("TELA_ALERTS", '{"notifier": "pager"}')
    with pytest.raises(ValueError, match="expected"):
        tela_alerts.load_config()


def _wrong_schema_parquet(path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"prompt": [1, 2]}).to_parquet(path)


BAD_INPUTS = [
    ("empty.jsonl", b"", "the file is empty"),
    ("nocol.jsonl", b'{"text": "hello"}\n', "missing 'prompt' column"),
    ("types.jsonl", b'{"prompt": "ok"}\n{"prompt": 42}\n', "row 2: field 'prompt' must be text"),
    ("latin1.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "line 2: invalid UTF-8"),
    ("huge.jsonl", b'{"prompt": "' + b"y" * 10_000_000 + b'"}\n', "row 1: field 'prompt' has 10,000,000 characters"),
    ("schema.parquet", _wrong_schema_parquet, "prompt"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_matrix_through_a_dag_run(
    pipeline_dag, populated_root, webhook, tmp_path, monkeypatch, name, content, message
):
    """Each bad input fails the run at ingest with the file, row and field named in the
    alert, before any model is called, and the store stays byte for byte as it was."""
    url, received = webhook
    monkeypatch.setenv("TELA_ALERTS", json.dumps({"notifier": "webhook", "url": url}))
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    before = _snapshot(populated_root)

    dr, states = _run(pipeline_dag, path)

    assert dr.state == "failed" and states["ingest_prompts"] == "failed"
    assert states["generate_answers"] == "upstream_failed"
    assert _snapshot(populated_root) == before
    (hit,) = received
    assert hit["json"]["stage"] == "ingest_prompts"
    assert name in hit["json"]["error"] and message in hit["json"]["error"]
