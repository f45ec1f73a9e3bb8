"""Defaults of the offline demo: every value here can be overridden by DAG params / CLI flags."""

from __future__ import annotations

from pathlib import Path

STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DEMO_PROMPTS = str(Path(__file__).parent / "demo_data" / "prompts.jsonl")

# base_url "local" starts the bundled OpenAI-compatible server over SmolLM2-135M-Instruct,
# so the offline demo goes through the same HTTP client path as a paid endpoint.
LOCAL_MODEL = {"name": "smollm2", "model": "smollm2", "base_url": "local"}
DEMO_MODELS = [LOCAL_MODEL]
DEMO_JUDGE = {"name": "smollm2-judge", "model": "smollm2", "base_url": "local"}
ROUTER_TYPE = "knn"
BENCHMARKS = ["mmlu", "gsm8k", "mt-bench"]

# Airflow Asset identities, as plain strings: the library never imports Airflow, the DAGs
# build `Asset(name=..., uri=...)` from these. New validated labels -> retraining; a newly
# promoted champion -> whatever serves routers.
LABELS_ASSET_NAME = "tela_labels"
LABELS_ASSET_URI = "tela://labels/validated"
ROUTER_ASSET_NAME = "tela_champion_router"
ROUTER_ASSET_URI = "tela://routers/champion"
RETRAIN_CRON = "0 3 * * 1"  # weekly, Monday 03:00 UTC
PUBLISH_METRIC = "mean_apgr"
