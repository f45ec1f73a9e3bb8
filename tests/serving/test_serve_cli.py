"""`tela serve` as a user runs it: a subprocess on an ephemeral port, the real openai
client against it, SIGTERM to stop; the traffic log is flushed on the way out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from conftest import ROUTER_EASY, ROUTER_HARD
from factories import labels_table
from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.training.train import train_router

TELA = str(Path(sys.executable).parent / "tela")


@pytest.mark.slow  # a fresh process loads the embedding model
def test_tela_serve_end_to_end(tmp_path, minilm):
    root = str(tmp_path / "artifacts")
    df = labels_table(ROUTER_EASY + ROUTER_HARD, lambda _, t: {"deep": True, "quick": t in ROUTER_EASY})
    labels = run_stage(
        "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"c": "cli"}, store=ArtifactStore(root)
    )
    ref = train_router(
        labels, router_type="knn", strong_model="deep", weak_model="quick", router_params={"k": 5}, artifact_root=root
    )
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref})

    with (
        ScriptedOpenAIServer(lambda b: Reply(content=f"deep says {last_user_text(b)}")) as deep,
        ScriptedOpenAIServer(lambda b: Reply(content=f"quick says {last_user_text(b)}")) as quick,
    ):
        models = tmp_path / "models.json"
        models.write_text(
            json.dumps(
                [
                    {"name": "deep", "model": "d1", "base_url": deep.base_url},
                    {"name": "quick", "model": "q1", "base_url": quick.base_url},
                ]
            )
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.Popen(
            [TELA, "--artifact-root", root, "serve", "--models", str(models), "--port", "0", "--no-auth"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            port, seen = None, []
            deadline = time.monotonic() + 120
            while port is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                seen.append(line)
                if m := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                    port = int(m.group(1))
                if not line and proc.poll() is not None:
                    break
            assert port, "".join(seen)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="whatever", max_retries=0)
            hard = client.chat.completions.with_raw_response.create(
                model="router-knn-0.5", messages=[{"role": "user", "content": "Prove Fermat's little theorem."}]
            )
            assert hard.headers["x-tela-model"] == "deep"
            assert hard.parse().choices[0].message.content == "deep says Prove Fermat's little theorem."
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    # uvicorn shuts down (lifespan: traffic flushed), then re-raises SIGTERM: 128 + 15
    assert proc.returncode in (0, 128 + signal.SIGTERM)
    segments = ArtifactStore(root).list("traffic/")
    assert segments and ArtifactStore(root).read_parquet(segments[0])["model"].tolist() == ["deep"]
