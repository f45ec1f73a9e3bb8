"""Test infrastructure for the live deployment tests: start and stop `scripts/cluster.py`
in a temporary state folder, and a REST API v2 client for it.

Ports: each `TELA_CLUSTER_{PG,REDIS,API,S3,GATEWAY}_PORT` set in the environment is used
as is (so several people running cluster tests on one machine can each keep to their own
range); the others are free ports picked here. A developer's own `make cluster` (state in
.cluster/, cluster.env in the repo) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(REPO / "scripts" / "cluster.py")]
PORTS = ("PG", "REDIS", "API", "S3", "GATEWAY")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@contextlib.contextmanager
def running_cluster(*up_args: str, env: dict | None = None, outputs: Path | None = None):
    """`cluster.py up *up_args` (with `env` added), yield its cluster.env as a dict plus
    `_state`, `_proc_env`, `_up_seconds`; on exit copy the component logs to `outputs`
    and `down`. TELA_CLUSTER_REUSE_ENV=path/to/cluster.env reuses a running cluster
    instead (development only: the tests then meet its leftovers)."""
    reuse = os.environ.get("TELA_CLUSTER_REUSE_ENV")
    if reuse:
        found = read_env(Path(reuse))
        yield {
            **found,
            "_state": found["TELA_CLUSTER_DIR"],
            "_proc_env": {**os.environ, "TELA_CLUSTER_DIR": found["TELA_CLUSTER_DIR"]},
        }
        return
    # Postgres runs as its own user, which must reach its data folder: not under pytest's
    # private (0700) temp root
    state = Path(tempfile.mkdtemp(prefix="tela-cluster-test-"))
    os.chmod(state, 0o755)
    proc_env = {
        **os.environ,
        "TELA_CLUSTER_DIR": str(state / "state"),
        "TELA_CLUSTER_ENV_FILE": str(state / "cluster.env"),
        **{f"TELA_CLUSTER_{p}_PORT": os.environ.get(f"TELA_CLUSTER_{p}_PORT") or str(free_port()) for p in PORTS},
        **(env or {}),
    }
    started = time.monotonic()
    up = subprocess.run([*SCRIPT, "up", *up_args], env=proc_env, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        found = read_env(state / "cluster.env")
        print(f"cluster healthy after {took:.0f} s")
        yield {
            **found,
            "_state": str(state / "state"),
            "_proc_env": proc_env,
            "_up_seconds": took,
            "_up_stdout": up.stdout,
        }
    finally:
        if outputs is not None:
            outputs.mkdir(parents=True, exist_ok=True)
            status = subprocess.run([*SCRIPT, "status"], env=proc_env, capture_output=True, text=True)
            (outputs / "cluster-status.txt").write_text(f"up in {took:.0f} s\n{status.stdout}")
            logs = Path(proc_env["TELA_CLUSTER_DIR"]) / "logs"
            if logs.exists():
                shutil.copytree(logs, outputs / "component-logs", dirs_exist_ok=True)
            task_logs = Path(proc_env["TELA_CLUSTER_DIR"]) / "airflow" / "logs"
            if task_logs.exists():
                shutil.copytree(task_logs, outputs / "task-logs", dirs_exist_ok=True)
        down = subprocess.run([*SCRIPT, "down"], env=proc_env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
        shutil.rmtree(state, ignore_errors=True)


class Api:
    """Airflow's REST API v2 with the cluster's login (a fresh token every 10 minutes)."""

    def __init__(self, env: dict):
        self.env = env
        self.url = env["AIRFLOW_URL"]
        self.session = requests.Session()
        self._token_at = 0.0

    def _auth(self):
        if time.monotonic() - self._token_at > 600:
            r = requests.post(
                f"{self.url}/auth/token",
                json={"username": self.env["AIRFLOW_USER"], "password": self.env["AIRFLOW_PASSWORD"]},
                timeout=30,
            )
            r.raise_for_status()
            self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
            self._token_at = time.monotonic()

    def call(self, method: str, path: str, **kw):
        self._auth()
        r = self.session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kw)
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else r.text

    def trigger(self, dag_id: str, conf: dict) -> str:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "-start_date"})["dag_runs"]

    def tis(self, dag_id: str, run_id: str) -> list[dict]:
        return self.call(
            "GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances", params={"limit": 200}
        )["task_instances"]

    def states(self, dag_id: str, run_id: str) -> dict:
        return {(t["task_id"], t["map_index"]): t["state"] for t in self.tis(dag_id, run_id)}

    def wait(self, dag_id: str, run_id: str, timeout: float = 900, states=("success", "failed")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in states:
                return run
            time.sleep(3)
        tis = {t["task_id"] + f"[{t['map_index']}]": t["state"] for t in self.tis(dag_id, run_id)}
        raise AssertionError(f"{dag_id} {run_id} still {run['state']} after {timeout:.0f} s: {tis}")

    def wait_for_run(self, dag_id: str, match, timeout: float = 900, what: str = "") -> dict:
        """The newest run of `dag_id` for which `match(run)` holds, once it has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.runs(dag_id) if match(r)]
            if found and found[0]["state"] in ("success", "failed"):
                return found[0]
            time.sleep(3)
        raise AssertionError(
            f"no finished {dag_id} run {what} after {timeout:.0f} s: "
            f"{[(r['run_id'], r['run_type'], r['state']) for r in self.runs(dag_id)[:5]]}"
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1):
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self.call("GET", path, params={"map_index": map_index})["value"]  # as stored: JSON
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def log(self, dag_id: str, run_id: str, ti: dict) -> str:
        path = (
            f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{ti['task_id']}"
            f"/logs/{ti['try_number']}"
        )
        return json.dumps(
            self.call(
                "GET",
                path,
                params={"map_index": ti["map_index"], "full_content": "true"},
                headers={"Accept": "application/json"},
            )
        )

    def set_connection(self, conn_id: str, body: dict) -> None:
        body = {"connection_id": conn_id, **body}
        have = self.call("GET", "/connections", params={"limit": 1000})["connections"]
        if any(c["connection_id"] == conn_id for c in have):
            self.call("PATCH", f"/connections/{conn_id}", json=body)  # a reused cluster
        else:
            self.call("POST", "/connections", json=body)
