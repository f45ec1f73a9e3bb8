"""The pipeline without Airflow (`tela pipeline`), killed with SIGKILL midway and re-run:
nothing that finished is lost or redone, nothing half-written is taken for complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TELA = str(Path(sys.executable).parent / "tela")


def _complete(root: Path, stage: str) -> list[Path]:
    return sorted((root / "stages" / stage).glob("*/_MANIFEST.json"))


def test_sigkill_midway_then_rerun(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"question": "What is 2 + 2?", "answer": "#### 4"},
                {"question": "What is 10 - 3?", "answer": "#### 7"},
            ]
        )
    )
    root = tmp_path / "artifacts"
    cmd = [
        TELA,
        "--artifact-root",
        str(root),
        "pipeline",
        "--source",
        str(src),
        "--routellm-max-prompts",
        "30",
        "--eval-max-prompts",
        "30",
        "--max-tokens",
        "8",
        "--min-rows-per-model",
        "2",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TELA_DQ_THRESHOLDS"}  # the defaults: verdicts by logprobs
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    # Labels done means validation / training is under way: kill the whole process group there.
    while not _complete(root, "labels") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _complete(root, "labels")
    assert not _complete(root, "evaluate")  # killed before the end
    generated = _complete(root, "generate")
    assert len(generated) == 1
    generated_bytes = generated[0].read_bytes()

    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    refs = json.loads(out.stdout)["stages"]
    assert (
        refs["ingest"]["reused"] and refs["generate"]["reused"] and refs["judge"]["reused"] and refs["labels"]["reused"]
    )
    assert not refs["evaluate"]["reused"]
    assert generated[0].read_bytes() == generated_bytes  # the finished answers were not redone
    for stage in ("ingest", "generate", "judge", "labels", "validate", "train", "evaluate"):
        assert len(_complete(root, stage)) == 1, stage  # nothing duplicated
    assert (root / "champion" / "CHAMPION.json").exists()
