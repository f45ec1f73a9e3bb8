"""The live deployment: `scripts/cluster.py up` (CeleryExecutor on Postgres + Redis, two
Celery workers, moto S3), driven through REST API v2 and a real browser, with faults.

One module-scoped cluster, started and stopped here in a temporary state folder
(tests/deployment/live_cluster.py: free ports unless TELA_CLUSTER_*_PORT say otherwise; a
developer's own `make cluster` is left alone). The LLM endpoints are our own:
the scripted OpenAI-compatible server (tests/openai_test_server.py) playing three models of
different quality and a judge, behind an API key given as an Airflow connection.

Skip locally with TELA_SKIP_CLUSTER_TESTS=1 (CI runs it: .ci/run). TELA_CLUSTER_REUSE_ENV=
path/to/cluster.env reuses a running cluster instead (development only: tests then assume
a fresh one and may fail on leftovers).

The tests run in file order and build on each other (one pipeline run feeds several).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "deployment"))
from live_cluster import Api, running_cluster  # noqa: E402

from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.skipif(os.environ.get("TELA_SKIP_CLUSTER_TESTS") == "1", reason="TELA_SKIP_CLUSTER_TESTS=1"),
]

SECRET = "sk-acme-" + os.urandom(8).hex()  # the endpoints' API key, only ever in a connection
CONN_ID = "tela_acme_key"
KEY_ENV = "ACME_API_KEY"
OUTPUTS = Path(os.environ.get("TELA_TEST_OUTPUTS") or REPO / "test-outputs" / "deployment")

# Our own world: three models and a judge. acme-large is right everywhere, acme-small only
# on short prompts, acme-medium on arithmetic. The judge gives [[5]] to a right answer.
PROMPTS = [
    "What is 12 + 30?",
    "Name the largest planet.",
    "What is 9 times 7?",
    "Spell 'router' backwards.",
    "Explain why the sum of two odd integers is always even, step by step, with a proof.",
    "Compare the time complexity of merge sort and quicksort in the worst and average cases.",
    "Derive the formula for the area of a circle from integration in polar coordinates.",
    "Describe how a write-ahead log lets a database recover committed transactions after a crash.",
]
SLOW_MODEL = "acme-large"  # replies slowly: the worker is killed while it is answering


def _right(model: str, prompt: str) -> bool:
    if model == "acme-large":
        return True
    if model == "acme-medium":
        return any(c.isdigit() for c in prompt)
    return len(prompt) < 40


def llm_rule(body: dict):
    model = body.get("model")
    text = last_user_text(body)
    if model == "acme-judge":
        return "Verdict: [[5]]" if "RIGHT answer by" in text else "Verdict: [[1]]"
    prompt = next((p for p in PROMPTS if p in text), text)
    content = f"{'RIGHT' if _right(model, prompt) else 'WRONG'} answer by {model}"
    # > the request cache's 5 s flush interval: each reply is stored before the next one
    return Reply(content, delay_s=6.0 if model == SLOW_MODEL else 0.3)


def endpoint(srv, name: str, **extra) -> dict:
    return {
        "name": name,
        "model": name,
        "base_url": srv.base_url,
        "conn_id": CONN_ID,
        "api_key_env": KEY_ENV,
        "max_tokens": 16,
        **extra,
    }


# --------------------------------------------------------------------------------------
# The cluster and a REST client
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """Start the deployment (about a minute on 2 cores), yield its cluster.env as a dict."""
    env = {  # a lost worker's tasks are failed (then retried) after this long without a heartbeat
        "TELA_CLUSTER_HEARTBEAT_TIMEOUT": "30",
        # retry delays a tenth of production's: the killed part comes back in seconds
        "TELA_RETRY_DELAY_SCALE": "0.1",
    }
    with running_cluster("--no-local-llm", env=env, outputs=OUTPUTS) as found:
        yield found


@pytest.fixture(scope="module")
def api(cluster):
    return Api(cluster)


@pytest.fixture(scope="module")
def s3(cluster):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=cluster["TELA_S3_ENDPOINT_URL"],
        aws_access_key_id=cluster["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cluster["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def s3_keys(s3, bucket="tela-artifacts") -> set[str]:
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys |= {o["Key"] for o in page.get("Contents", [])}
    return keys


@pytest.fixture(scope="module")
def llm():
    with ScriptedOpenAIServer(llm_rule, api_key=SECRET) as srv:
        yield srv


class Webhook:
    def __init__(self):
        self.bodies: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/alerts"


@pytest.fixture(scope="module")
def webhook(api):
    hook = Webhook()
    api.call(
        "POST", "/variables", json={"key": "tela_alerts", "value": json.dumps({"notifier": "webhook", "url": hook.url})}
    )
    yield hook
    hook.httpd.shutdown()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "acme_prompts.jsonl"
    # with reference answers: the judge grades against them (no reference model needed)
    path.write_text(
        "".join(json.dumps({"prompt": p, "reference_answer": f"A reference answer to: {p}"}) + "\n" for p in PROMPTS)
    )
    os.chmod(path.parent, 0o755)
    return str(path)


def small_conf(srv, source: str, **over) -> dict:
    conf = {
        "source": source,
        "models": [
            endpoint(srv, "acme-large", concurrency=1),
            endpoint(srv, "acme-medium"),
            endpoint(srv, "acme-small"),
        ],
        "judge": endpoint(srv, "acme-judge"),
        "reference_model": None,
        "max_tokens": 16,
        "routellm_max_prompts": 20,
        "eval_max_prompts": 20,
        "min_rows_per_model": 2,
        "router_type": "knn",
    }
    conf.update(over)
    return conf


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------


def test_every_component_is_up_and_the_consumers_are_unpaused(cluster, api):
    health = requests.get(f"{cluster['AIRFLOW_URL']}/api/v2/monitor/health", timeout=30).json()
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[part]["status"] == "healthy", health
    for dag_id in ("router_pipeline", "router_retraining", "router_drift", "router_drift_relabel"):
        assert api.call("GET", f"/dags/{dag_id}")["is_paused"] is False
    assert cluster["TELA_ARTIFACT_ROOT"].startswith("s3://")
    # Unpausing the cron-scheduled retraining made its latest interval's run at once:
    # with no labels yet it ends as skipped work, not a failure.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = [r for r in api.runs("router_retraining") if r["run_type"] == "scheduled"]
        if runs and runs[0]["state"] in ("success", "failed"):
            break
        time.sleep(3)
    assert runs and runs[0]["state"] == "success", runs
    states = {t["task_id"]: t["state"] for t in api.tis("router_retraining", runs[0]["dag_run_id"])}
    assert states["resolve_labels"] == "skipped" and set(states.values()) == {"skipped"}, states


@pytest.fixture(scope="module")
def acme_connection(api):
    """The endpoints' key, only as an Airflow connection (tasks get it as ACME_API_KEY)."""
    api.set_connection(CONN_ID, {"conn_type": "generic", "password": SECRET})
    return CONN_ID


@pytest.fixture(scope="module")
def main_run(cluster, api, llm, prompts_file, webhook, acme_connection):
    """router_pipeline through the REST API: 3 models in tela_llm at 2 slots, a causal-LLM
    router (gpu queue), and the default worker SIGKILLed while acme-large is answering."""
    api.call("PATCH", "/pools/tela_llm", json={"name": "tela_llm", "slots": 2, "include_deferred": False})
    conf = small_conf(
        llm,
        prompts_file,
        router_type="causal_llm",
        router_params={"base_model": "tiny", "epochs": 2, "max_length": 48, "batch_size": 16},
    )
    started = time.monotonic()
    run_id = api.trigger("router_pipeline", conf)
    # Kill when acme-large has had >= 2 replies stored and is answering the next one, and
    # the other generate parts are done (their replies are in the request cache).
    killed = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and killed is None:
        gen = [t for t in api.tis("router_pipeline", run_id) if t["task_id"] == "generate_part"]
        others_done = len(gen) == 3 and sum(t["state"] == "success" for t in gen) == 2
        large_replies = sum(1 for r in llm.requests if r.get("model") == SLOW_MODEL)
        if others_done and large_replies >= 3 and llm.in_flight:
            time.sleep(1.0)
            pid = int((Path(cluster["_state"]) / "pids" / "worker-default.pid").read_text())
            victims = _descendants(pid)
            for p in victims:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = {
                "at_s": round(time.monotonic() - started, 1),
                "processes": len(victims),
                "acme_large_requests_before": large_replies,
            }
        time.sleep(0.5)
    assert killed, "acme-large's generate part never got going"
    time.sleep(2)
    back = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "cluster.py"), "start", "worker-default"],
        env=cluster["_proc_env"],
        capture_output=True,
        text=True,
    )
    assert back.returncode == 0, back.stderr
    run = api.wait("router_pipeline", run_id, timeout=1200)
    wall = time.monotonic() - started
    tis = api.tis("router_pipeline", run_id)
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    (OUTPUTS / "main-run.json").write_text(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "killed": killed,
                "state": run["state"],
                "server": llm.stats(),
                "task_instances": tis,
            },
            indent=1,
            default=str,
        )
    )
    return {"run_id": run_id, "run": run, "tis": tis, "wall_s": wall, "killed": killed, "conf": conf}


def test_pipeline_succeeds_on_celery_workers_with_artifacts_on_s3(main_run, s3):
    assert main_run["run"]["state"] == "success", {t["task_id"]: t["state"] for t in main_run["tis"]}
    ran = [t for t in main_run["tis"] if t["state"] == "success"]
    assert {t["hostname"].split("@")[0] for t in ran} <= {"tela-default-worker", "tela-gpu-worker"}
    from router_tasks.core.stage import MANIFEST
    from router_tasks.lifecycle.publish import CHAMPION_KEY

    keys = s3_keys(s3)
    for stage in ("ingest", "generate", "judge", "labels", "validate", "train", "evaluate"):
        assert any(k.startswith(f"pipeline/stages/{stage}/") and k.endswith(MANIFEST) for k in keys), stage
    assert f"pipeline/{CHAMPION_KEY}" in keys


def test_gpu_training_runs_on_the_gpu_worker(main_run):
    by_id = {t["task_id"]: t for t in main_run["tis"] if t["map_index"] == -1}
    # a GPU router trains, and is scored, on the gpu queue; its cpu twins are skipped
    on_gpu = ("train_router_gpu", "evaluate_router_gpu")
    for task_id in on_gpu:
        gpu = by_id[task_id]
        assert gpu["state"] == "success" and gpu["queue"] == "gpu" and gpu["pool"] == "tela_gpu", gpu
        assert gpu["hostname"].startswith("tela-gpu-worker@"), gpu["hostname"]
        assert by_id[task_id.replace("_gpu", "_cpu")]["state"] == "skipped"
    assert all(
        not t["hostname"].startswith("tela-gpu-worker")
        for t in main_run["tis"]
        if t["task_id"] not in on_gpu and t["hostname"]
    )


def test_llm_pool_of_two_slots_is_enforced(main_run, api):
    llm_tis = [t for t in main_run["tis"] if t["pool"] == "tela_llm"]
    assert sum(t["task_id"] == "generate_part" for t in llm_tis) == 3  # more mapped parts than slots
    # every try counts (the killed one held its slot until it was failed)
    tries = []
    for t in llm_tis:
        path = (
            f"/dags/router_pipeline/dagRuns/{urllib.parse.quote(main_run['run_id'], safe='')}/taskInstances/"
            f"{t['task_id']}/{t['map_index']}/tries"
            if t["map_index"] >= 0
            else f"/dags/router_pipeline/dagRuns/{urllib.parse.quote(main_run['run_id'], safe='')}/taskInstances/"
            f"{t['task_id']}/tries"
        )
        tries += [x for x in api.call("GET", path)["task_instances"] if x["start_date"] and x["end_date"]]
    assert len(tries) >= 5, tries  # references, 3 parts (one tried twice), judge
    most = _overlap([(_ts(t["start_date"]), _ts(t["end_date"])) for t in tries])
    assert most <= 2, most
    assert most == 2  # the worker runs 4 at once: the pool, not the worker, held them to 2


def test_killed_worker_task_is_retried_and_nothing_is_paid_twice(main_run, llm):
    parts = {t["map_index"]: t for t in main_run["tis"] if t["task_id"] == "generate_part"}
    # plan_generation lists (shard, model) in the models' order: part 0 is acme-large
    assert parts[0]["try_number"] >= 2, [(i, t["try_number"], t["hostname"]) for i, t in parts.items()]
    assert parts[1]["try_number"] == parts[2]["try_number"] == 1  # finished before the kill
    assert main_run["run"]["state"] == "success"
    # every prompt answered once per model, judged once per answer: no reply bought twice
    assert llm.resent_after_success == 0, llm.stats()
    assert llm.count(SLOW_MODEL) >= len(PROMPTS)
    assert llm.stats()["max_successes_per_body"] == 1


def test_connection_secret_never_reaches_task_logs(main_run, api, llm, cluster):
    assert llm.auth_headers and all(h == f"Bearer {SECRET}" for h in llm.auth_headers)  # the key was used
    logs = "".join(api.log("router_pipeline", main_run["run_id"], t) for t in main_run["tis"] if t["try_number"])
    assert "generate_part" in logs or "acme" in logs  # real logs came back
    assert SECRET not in logs
    assert cluster["AWS_SECRET_ACCESS_KEY"] not in logs


def test_labels_asset_schedules_retraining_which_publishes(main_run, api, s3):
    deadline = time.monotonic() + 900
    run = None
    while time.monotonic() < deadline:
        runs = [r for r in api.runs("router_retraining") if r["run_type"] == "asset_triggered"]
        if runs and runs[0]["state"] in ("success", "failed"):
            run = runs[0]
            break
        time.sleep(5)
    assert run is not None, "no asset-triggered retraining run finished"
    states = {(t["task_id"], t["map_index"]): t["state"] for t in api.tis("router_retraining", run["dag_run_id"])}
    assert run["state"] == "success", states
    assert states[("resolve_labels", -1)] == "success"
    assert states[("publish", -1)] in ("success", "skipped")  # promoted, or the champion kept (a decision either way)
    keys = s3_keys(s3)
    assert any("decision" in k or "champion" in k for k in keys)


def test_bad_input_fails_at_ingest_alerts_the_webhook_and_stores_nothing(main_run, api, llm, webhook, s3, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": broken\n')
    os.chmod(tmp_path, 0o755)
    before = s3_keys(s3)
    n_alerts = len(webhook.bodies)
    run_id = api.trigger("router_pipeline", small_conf(llm, str(bad)))
    run = api.wait("router_pipeline", run_id, timeout=600)
    assert run["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in api.tis("router_pipeline", run_id) if t["map_index"] == -1}
    assert states["ingest_prompts"] == "failed"
    assert states.get("build_labels") in ("upstream_failed", None)
    deadline = time.monotonic() + 180  # the DAG callback runs in the dag-processor
    while len(webhook.bodies) == n_alerts and time.monotonic() < deadline:
        time.sleep(2)
    alert = next(b for b in webhook.bodies[n_alerts:] if b["run_id"] == run_id)
    assert alert["dag_id"] == "router_pipeline" and alert["stage"] == "ingest_prompts"
    assert "line 2" in alert["text"] and "malformed JSON" in alert["text"]
    assert s3_keys(s3) == before


@pytest.mark.browser
def test_ui_trigger_form_edit_and_run(cluster, api, llm, prompts_file, acme_connection):
    """Log in with chromium, open router_pipeline's trigger form, check every param and its
    description, set source/sample, replace models with our endpoints, trigger; the run
    succeeds with exactly that conf."""
    sys.path.insert(0, str(Path(__file__).parent))
    from ui_driver import drive_trigger_form

    models = [endpoint(llm, "acme-medium"), endpoint(llm, "acme-small")]
    result = drive_trigger_form(
        cluster, source=prompts_file, sample=5, models=models, judge=endpoint(llm, "acme-judge"), outputs=OUTPUTS
    )
    for name, description in result["params"].items():
        assert description.strip(), f"{name}: no description shown"
    assert {
        "source",
        "sample",
        "models",
        "judge",
        "max_tokens",
        "router_type",
        "strong_model",
        "weak_model",
        "benchmarks",
    } <= set(result["params"])
    run = api.wait("router_pipeline", result["run_id"], timeout=900)
    assert run["state"] == "success", {t["task_id"]: t["state"] for t in api.tis("router_pipeline", run["dag_run_id"])}
    conf = run["conf"]
    assert conf["source"] == prompts_file and conf["sample"] == 5
    assert conf["models"] == models and conf["judge"] == endpoint(llm, "acme-judge")
    for shot in ("trigger-form.png", "run-finished.png"):
        assert (OUTPUTS / shot).stat().st_size > 10_000
