"""Wall time of one small router_pipeline run: on the cluster (`make cluster`, CeleryExecutor)
vs in one process (`airflow dags test`, SQLite), same conf, same scripted endpoints.

    python benchmark_scripts/cluster_vs_dags_test.py           # starts and stops its own cluster
    python benchmark_scripts/cluster_vs_dags_test.py --reuse   # use the cluster in ./cluster.env

Both runs call the scripted OpenAI-compatible test server (tests/openai_test_server.py,
0.3 s per reply), write artifacts to an S3 API (the cluster's moto / a moto server started
here), 6 prompts x 2 models, the kNN router, capped RouteLLM labels and evaluation. Each
side gets a fresh artifact prefix, so neither reuses the other's stages. Prints the two
wall times and their ratio, plus the cluster's start time when it starts one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text  # noqa: E402

PROMPTS = [
    "What is 4 + 9?",
    "Name a prime above 20.",
    "Why is the sky blue? Explain the physics briefly.",
    "Summarise the causes of the French Revolution in three sentences.",
    "What is 6 times 8?",
    "Describe how TCP recovers from a lost packet.",
]


def rule(body):
    if body.get("model") == "bench-judge":
        return "[[5]]" if "GOOD" in last_user_text(body) else "[[2]]"
    return Reply(
        ("GOOD" if body["model"] == "bench-large" or len(last_user_text(body)) < 30 else "MEH") + " answer", delay_s=0.3
    )


def conf(srv, source: str) -> dict:
    ep = lambda n: {"name": n, "model": n, "base_url": srv.base_url, "api_key_env": "BENCH_KEY", "max_tokens": 16}  # noqa: E731
    return {
        "source": source,
        "models": [ep("bench-large"), ep("bench-small")],
        "judge": ep("bench-judge"),
        "reference_model": None,
        "routellm_max_prompts": 20,
        "eval_max_prompts": 20,
        "min_rows_per_model": 2,
        "router_type": "knn",
    }


def run_dags_test(c: dict, workdir: Path) -> float:
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO),
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TELA_S3_ENDPOINT_URL": endpoint,
        "BENCH_KEY": "k",
        "TELA_ARTIFACT_ROOT": "s3://bench/pipeline",
    }
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    ).create_bucket(Bucket="bench")
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, str(REPO / "plugins" / "tela_pools.py")], env=env, check=True, capture_output=True)
    started = time.monotonic()
    res = subprocess.run(
        [airflow, "dags", "test", "router_pipeline", "-c", json.dumps(c)], env=env, capture_output=True, text=True
    )
    took = time.monotonic() - started
    moto.stop()
    if "state=success" not in res.stdout + res.stderr:
        raise SystemExit(f"airflow dags test failed:\n{(res.stdout + res.stderr)[-3000:]}")
    return took


def run_on_cluster(c: dict, env: dict) -> float:
    url = env["AIRFLOW_URL"]
    token = requests.post(
        f"{url}/auth/token", json={"username": env["AIRFLOW_USER"], "password": env["AIRFLOW_PASSWORD"]}, timeout=30
    ).json()["access_token"]
    h = {"Authorization": f"Bearer {token}"}
    # The cluster's tasks read the key from their own environment: give it as a connection.
    requests.post(
        f"{url}/api/v2/connections",
        headers=h,
        timeout=30,
        json={"connection_id": "bench_key", "conn_type": "generic", "password": "k"},
    )
    c = {
        **c,
        "models": [{**m, "conn_id": "bench_key"} for m in c["models"]],
        "judge": {**c["judge"], "conn_id": "bench_key"},
    }
    started = time.monotonic()
    run_id = requests.post(
        f"{url}/api/v2/dags/router_pipeline/dagRuns", headers=h, timeout=30, json={"logical_date": None, "conf": c}
    ).json()["dag_run_id"]
    while True:
        state = requests.get(
            f"{url}/api/v2/dags/router_pipeline/dagRuns/{urllib.parse.quote(run_id, safe='')}", headers=h, timeout=30
        ).json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(2)
    took = time.monotonic() - started
    if state != "success":
        raise SystemExit(f"cluster run {run_id} {state}")
    return took


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reuse", action="store_true", help="use the running cluster described by ./cluster.env")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tela-bench-"))
    os.chmod(work, 0o755)
    source = work / f"prompts-{uuid.uuid4().hex[:6]}.jsonl"
    source.write_text("".join(json.dumps({"prompt": q, "reference_answer": "GOOD reference"}) + "\n" for q in PROMPTS))
    script = [sys.executable, str(REPO / "scripts" / "cluster.py")]
    with ScriptedOpenAIServer(rule) as srv:
        c = conf(srv, str(source))
        in_process = run_dags_test(c, work)
        print(f"airflow dags test: {in_process:.0f} s")
        if a.reuse:
            env = dict(line.split("=", 1) for line in (REPO / "cluster.env").read_text().splitlines() if "=" in line)
            started_s = None
        else:
            t0 = time.monotonic()
            subprocess.run([*script, "up", "--no-local-llm"], check=True)
            started_s = time.monotonic() - t0
            env = dict(line.split("=", 1) for line in (REPO / "cluster.env").read_text().splitlines() if "=" in line)
        try:
            # a second source file: the cluster run must not reuse the in-process run's stages
            # (they are on another S3 server anyway)
            on_cluster = run_on_cluster(c, env)
        finally:
            if not a.reuse:
                subprocess.run([*script, "down"])
    if started_s is not None:
        print(f"cluster start: {started_s:.0f} s")
    print(f"cluster (CeleryExecutor) run: {on_cluster:.0f} s; ratio cluster / dags test: {on_cluster / in_process:.2f}")


if __name__ == "__main__":
    main()
