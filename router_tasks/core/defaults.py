"""Defaults of the offline demo: every value here can be overridden by DAG params / CLI flags."""

from __future__ import annotations

import os
from pathlib import Path

STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DEMO_PROMPTS = str(Path(__file__).parent.parent / "data" / "files" / "demo" / "prompts.jsonl")

# base_url "local" starts the bundled OpenAI-compatible server over SmolLM2-135M-Instruct,
# so the offline demo goes through the same HTTP client path as a paid endpoint.
LOCAL_MODEL = {"name": "smollm2", "model": "smollm2", "base_url": "local"}
DEMO_MODELS = [LOCAL_MODEL]
# A short explanation budget: the 135M judge's verdict comes from the probabilities of 1-5
# after `[[` (a continued turn when it writes none), and a long ramble costs CPU minutes.
DEMO_JUDGE = {"name": "smollm2-judge", "model": "smollm2", "base_url": "local", "max_tokens": 48}
# Writes the reference answers the data lacks; in production the strong model (GPT-4o class).
DEMO_REFERENCE = {"name": "smollm2-reference", "model": "smollm2", "base_url": "local", "max_tokens": 128}
JUDGE_BATCH_CONN_ID = "tela_judge_batch"  # an Airflow `openai` connection: host = base URL, password = key
BATCH_POLL_SECONDS = 60.0  # how often a deferred batch wait asks for status; env TELA_BATCH_POLL_SECONDS
# The demo's router: the best by cross-fit and leave-subject-out APGR with its settings
# chosen inside the training folds (README, benchmark_scripts/router_quality.py), and it
# trains in seconds to tens of seconds on the bundled labels.
ROUTER_TYPE = "ensemble"
# Scheduled retraining trains these and publishes the best: the ensemble, and kNN as the
# cheap fallback it must beat on the same evaluation.
RETRAIN_ROUTER_TYPES = ["knn", "ensemble"]
BENCHMARKS = ["mmlu", "gsm8k", "mt-bench"]

# Airflow Asset identities, as plain strings: the library never imports Airflow, the DAGs
# build `Asset(name=..., uri=...)` from these. New validated labels -> retraining; a newly
# promoted champion -> whatever serves routers.
LABELS_ASSET_NAME = "tela_labels"
LABELS_ASSET_URI = "tela://labels/validated"
ROUTER_ASSET_NAME = "tela_champion_router"
ROUTER_ASSET_URI = "tela://routers/champion"
# Drift in the gateway's traffic (router_drift) -> labeling a sample of it (router_drift_relabel).
DRIFT_ASSET_NAME = "tela_traffic_drift"
DRIFT_ASSET_URI = "tela://traffic/drift"
RETRAIN_CRON = "0 3 * * 1"  # weekly, Monday 03:00 UTC
PUBLISH_METRIC = "mean_apgr"

# Where the DAGs run which task (names only: the DAGs set them on tasks, and
# `plugins/tela_pools.py` creates the pools in the Airflow DB). Routers that need a GPU
# (`routers.GPU_ROUTERS`) train on the GPU queue, in the GPU pool, bounded by the timeout;
# tasks calling paid LLM endpoints share the LLM pool.
GPU_QUEUE = "gpu"  # a Celery worker started with `airflow celery worker --queues gpu`
GPU_POOL = "tela_gpu"
LLM_POOL = "tela_llm"
TRAIN_TIMEOUT_HOURS = 12  # a causal-LLM fine-tune can run for hours: a hung one frees its worker
# evaluating a GPU router scores every benchmark prompt x model through the LLM (on the GPU
# queue too); a hung one frees its worker
EVALUATE_TIMEOUT_HOURS = 4
# Airflow's `airflow pools import` JSON shape; the slots are the defaults for a new DB
# (resize with `airflow pools set NAME SLOTS DESCRIPTION`: existing pools are left alone).
POOLS = {
    GPU_POOL: {
        "slots": 1,
        "description": "GPU training: router fine-tunes at once (one per GPU)",
        "include_deferred": False,
    },
    LLM_POOL: {
        "slots": 4,
        "description": "LLM API calls: tasks calling paid endpoints at once",
        "include_deferred": False,
    },
}

# Every parameter of a pipeline run (name, type, default, help, CLI flag) is a row of the
# one table in `router_tasks.core.params` (its `PIPELINE_PARAMS`: each one's default).

MODEL_CACHE_ENV = "TELA_MODEL_CACHE"


def model_cache_dir() -> Path:
    """The one folder for converted local models (the dequantised SmolLM2 GGUF), shared by
    the bundled LLM server and the causal-LLM router: $TELA_MODEL_CACHE, else
    $XDG_CACHE_HOME/tela/models, else ~/.cache/tela/models."""
    if os.environ.get(MODEL_CACHE_ENV):
        return Path(os.environ[MODEL_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tela" / "models"
