"""The router pipeline: ingest -> generate -> judge -> labels -> validate -> train ->
evaluate -> publish -> summary.

Thin wiring only: each task is a `router_tasks` entry function; artifact references (small
dicts) travel through XCom, the data stays in the artifact store. The defaults run the
offline demo; trigger from the UI with other params to point it at real data/endpoints.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from tela_alerts import dag_failure_alert, record_task_failure
from tela_assets import LABELS_ASSET
from tela_connections import export_connections  # plugins/ is on sys.path

from router_tasks import defaults
from router_tasks.evaluate import evaluate_router
from router_tasks.generate import generate_answers
from router_tasks.ingest import ingest_prompts
from router_tasks.judge import judge_answers
from router_tasks.labels import build_labels
from router_tasks.publish import publish_router
from router_tasks.summary import summarize_run
from router_tasks.train import train_router
from router_tasks.validate import validate_labels


def stage(fn):
    """A library entry function as one task; its artifact ref travels as a single XCom."""
    return task(fn, multiple_outputs=False)


@task(outlets=[LABELS_ASSET])
def announce_labels(labels: dict) -> dict:
    """Emit the labels Asset: router_retraining runs on the labels this event carries."""
    from router_tasks.retraining import record_labels

    extra = record_labels(labels)
    get_current_context()["outlet_events"][LABELS_ASSET].extra = extra
    return extra


@task
def summary(stages: dict, decision: dict) -> str:
    text = summarize_run(stages, decision, run_id=get_current_context()["run_id"])
    print(text)
    return text


@dag(
    dag_id="router_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,  # list/dict params reach the functions as objects
    tags=["tela-wizard"],
    # Secrets reach the library as env vars of the task process, from Airflow connections.
    default_args={"on_execute_callback": export_connections, "on_failure_callback": record_task_failure},
    on_failure_callback=dag_failure_alert,  # data-quality alert (plugins/tela_alerts.py)
    params={
        "source": Param(defaults.DEMO_PROMPTS, type="string", description="jsonl/csv/parquet path or s3:// URI"),
        "sample": Param(None, type=["null", "integer"], description="keep at most this many prompts"),
        "models": Param(defaults.DEMO_MODELS, type="array", description="OSS endpoints to label"),
        "judge": Param(defaults.DEMO_JUDGE, type="object", description="judge endpoint"),
        "max_tokens": Param(96, type="integer"),
        "include_routellm": Param(True, type="boolean", description="add the bundled RouteLLM labels"),
        "routellm_max_prompts": Param(None, type=["null", "integer"], description="cap bundled prompts per benchmark (quick runs)"),
        "min_rows_per_model": Param(5, type="integer", description="labels needed per model to train"),
        "router_params": Param({}, type="object", description='router settings, e.g. {"k": 50} or, for causal_llm, {"base_model": "/models/Llama-3.2-1B", "device": "cuda"}'),
        "use_gpu": Param(True, type="boolean", description="GPU routers (causal_llm) use a GPU when present; off pins them to the CPU"),
        "router_type": Param(defaults.ROUTER_TYPE, type="string"),
        "strong_model": Param(defaults.STRONG_MODEL, type="string"),
        "weak_model": Param(defaults.WEAK_MODEL, type="string"),
        "benchmarks": Param(defaults.BENCHMARKS, type="array"),
        "eval_max_prompts": Param(None, type=["null", "integer"], description="cap evaluated prompts per benchmark (quick runs)"),
    },
)
def router_pipeline():
    prompts = stage(ingest_prompts)(source="{{ params.source }}", sample="{{ params.sample }}")
    answers = stage(generate_answers)(prompts, models="{{ params.models }}", max_tokens="{{ params.max_tokens }}")
    judgements = stage(judge_answers)(prompts, answers, judge="{{ params.judge }}")
    labels = stage(build_labels)(
        prompts,
        judgements,
        include_routellm="{{ params.include_routellm }}",
        routellm_max_prompts="{{ params.routellm_max_prompts }}",
    )
    valid = stage(validate_labels)(labels, min_rows_per_model="{{ params.min_rows_per_model }}")
    announce_labels(valid)
    # A causal-LLM fine-tune can run for hours on a GPU: bound it so a hung job frees the worker.
    router = stage(train_router).override(execution_timeout=timedelta(hours=12))(
        valid,
        router_params="{{ params.router_params }}",
        use_gpu="{{ params.use_gpu }}",
        router_type="{{ params.router_type }}",
        strong_model="{{ params.strong_model }}",
        weak_model="{{ params.weak_model }}",
    )
    evaluation = stage(evaluate_router)(
        router, benchmarks="{{ params.benchmarks }}", max_prompts="{{ params.eval_max_prompts }}"
    )
    decision = stage(publish_router)(router, evaluation)
    summary(
        {
            "ingest": prompts,
            "generate": answers,
            "judge": judgements,
            "labels": labels,
            "validate": valid,
            "train": router,
            "evaluate": evaluation,
        },
        decision,
    )


router_pipeline()
