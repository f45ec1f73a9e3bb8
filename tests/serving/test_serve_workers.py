"""`tela serve --workers 2` as a team runs it: two processes on one port, each loading
and hot-reloading the champion on its own, one rpm limit across them through Redis, and
both flushing their traffic log on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway_world import KEY_ENV, UP_KEY, models_config, redis_server, train_champion
from openai_test_server import Reply, ScriptedOpenAIServer
from router_tasks.core.store import ArtifactStore
from router_tasks.serving import keys as client_keys

TELA = str(Path(sys.executable).parent / "tela")


def _health(base: str) -> dict:
    # a new connection each time, so the kernel may hand it to either worker
    try:
        with httpx.Client(timeout=10) as c:
            r = c.get(f"{base}/health", headers={"connection": "close"})
    except httpx.ConnectError:  # no worker listens yet (they start after the port is bound)
        time.sleep(0.1)
        return {}
    return r.json() if r.status_code == 200 else {}


@pytest.mark.slow  # two fresh processes load the router and the embedding model
def test_workers_share_one_port_one_limit_and_each_reloads(tmp_path, minilm):
    root = str(tmp_path / "artifacts")
    first = train_champion(root)
    keys_file = str(tmp_path / "KEYS")
    key = client_keys.create_key(keys_file, "team", rpm=4)
    rule = lambda b: Reply(content="fine", prompt_tokens=3, completion_tokens=1)  # noqa: E731
    env = {
        **os.environ,
        KEY_ENV: UP_KEY,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    with (
        ScriptedOpenAIServer(rule, api_key=UP_KEY) as large,
        ScriptedOpenAIServer(rule, api_key=UP_KEY) as small,
        redis_server() as redis_url,
    ):
        models = tmp_path / "models.json"
        models.write_text(json.dumps(models_config(large.base_url, small.base_url)))
        proc = subprocess.Popen(
            [
                TELA,
                "--artifact-root",
                root,
                "serve",
                "--models",
                str(models),
                "--port",
                "0",
                "--workers",
                "2",
                "--keys",
                keys_file,
                "--redis-url",
                redis_url,
                "--reload-s",
                "0.5",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            port, seen = None, []
            deadline = time.monotonic() + 180
            while port is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                seen.append(line)
                if m := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                    port = int(m.group(1))
                if not line and proc.poll() is not None:
                    break
            assert port, "".join(seen)
            base = f"http://127.0.0.1:{port}"
            pids = set()
            while len(pids) < 2 and time.monotonic() < deadline:
                if (h := _health(base)).get("router"):
                    assert h["router"]["key"] == first["key"] and h["limits"] == "redis"
                    pids.add(h["pid"])
            assert len(pids) == 2, "both workers should answer on the one port"

            codes = []
            for _ in range(6):
                with httpx.Client(timeout=30) as c:
                    r = c.post(
                        f"{base}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}", "connection": "close"},
                        json={"model": "tela-auto", "messages": [{"role": "user", "content": "Hi there"}]},
                    )
                codes.append(r.status_code)
            assert sorted(codes) == [200] * 4 + [429] * 2  # one limit, not one per worker

            second = train_champion(root, params={"k": 3})
            assert second["key"] != first["key"]
            reloaded = set()
            while len(reloaded) < 2 and time.monotonic() < deadline + 60:
                h = _health(base)
                if (h.get("router") or {}).get("key") == second["key"]:
                    reloaded.add(h["pid"])
            assert reloaded == pids, "each worker reloads the new champion itself"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert proc.returncode in (0, 128 + signal.SIGTERM)
    store = ArtifactStore(root)
    rows = sum(len(store.read_parquet(k)) for k in store.list("traffic/"))
    assert rows == 4  # every answered request's row was flushed, whichever worker served it
