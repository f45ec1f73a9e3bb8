"""The whole pipeline as plain function calls: what the DAG wires, runnable without Airflow
(`tela pipeline`), e.g. in a notebook or a container job."""

from __future__ import annotations

from router_tasks.core import defaults
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.labeling.generate import generate_answers
from router_tasks.data.ingest import ingest_prompts
from router_tasks.labeling.judge import judge_answers
from router_tasks.data.labels import build_labels
from router_tasks.labeling.ledger import cost_ledger
from router_tasks.lifecycle.publish import publish_router
from router_tasks.labeling.references import generate_references
from router_tasks.lifecycle.summary import summarize_run
from router_tasks.routers.train import train_router
from router_tasks.data.validate import validate_labels


def run_pipeline(
    source: str = defaults.DEMO_PROMPTS,
    *,
    sample: int | None = None,
    models: list[dict] | None = None,
    judge: dict | None = None,
    reference_model: dict | None = defaults.DEMO_REFERENCE,
    max_tokens: int = 96,
    include_routellm: bool = True,
    routellm_max_prompts: int | None = None,
    min_rows_per_model: int = 5,
    router_type: str = defaults.ROUTER_TYPE,
    strong_model: str = defaults.STRONG_MODEL,
    weak_model: str = defaults.WEAK_MODEL,
    benchmarks: list[str] | None = None,
    eval_max_prompts: int | None = None,
    run_id: str = "cli",
    artifact_root: str | None = None,
) -> dict:
    """Run every stage in order; returns {"stages": refs, "decision": ..., "summary": markdown}."""
    root = {"artifact_root": artifact_root}
    prompts = ingest_prompts(source, sample=sample, **root)
    referenced = generate_references(prompts, reference=reference_model, **root)
    answers = generate_answers(prompts, models=models or defaults.DEMO_MODELS, max_tokens=max_tokens, **root)
    judgements = judge_answers(referenced, answers, judge=judge or defaults.DEMO_JUDGE, **root)
    ledger = cost_ledger({"references": referenced, "generate": answers, "judge": judgements}, **root)
    labels = build_labels(referenced, judgements, include_routellm=include_routellm, routellm_max_prompts=routellm_max_prompts, **root)
    valid = validate_labels(labels, min_rows_per_model=min_rows_per_model, **root)
    router = train_router(valid, router_type=router_type, strong_model=strong_model, weak_model=weak_model, **root)
    evaluation = evaluate_router(router, benchmarks=benchmarks or defaults.BENCHMARKS, max_prompts=eval_max_prompts, **root)
    decision = publish_router(router, evaluation, **root)
    stages = {
        "ingest": prompts,
        "references": referenced,
        "generate": answers,
        "judge": judgements,
        "labels": labels,
        "validate": valid,
        "train": router,
        "evaluate": evaluation,
        "ledger": ledger,
    }
    summary = summarize_run(stages, decision, run_id=run_id, **root)
    return {"stages": stages, "decision": decision, "summary": summary}
