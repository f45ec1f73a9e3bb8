"""The router pipeline: ingest -> references -> generate (mapped over shards x models) ->
[judge batch] -> judge (mapped over shards) -> judge agreement -> ledger, labels -> validate
-> train -> evaluate -> publish -> summary.

Wiring only: the stages, their order and each one's arguments come from
`router_tasks.pipeline.STEPS` (the list `tela pipeline` runs), so the two cannot drift
(tests/dags/test_pipeline_drift.py). Artifact references (small dicts) travel through
XCom, the data stays in the artifact store. The defaults run the offline demo; trigger
from the UI with other params to point it at real data and endpoints.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.openai.operators.openai import OpenAITriggerBatchOperator
from airflow.sdk import dag, get_current_context, task

import tela_retries as retry
from router_tasks.core import defaults
from router_tasks.data.validate import validate_labels
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.labeling.agreement import measure_judge_agreement
from router_tasks.labeling.generate import combine_answers, generate_part, plan_generation
from router_tasks.labeling.judge import combine_judgements, judge_part, plan_judging
from router_tasks.labeling.judge_batch import BATCH_ENDPOINT
from router_tasks.labeling.ledger import cost_ledger
from router_tasks.labeling.references import generate_references
from router_tasks.lifecycle.publish import publish_router
from router_tasks.lifecycle.summary import summarize_run
from router_tasks.pipeline import STEP, SUMMARY_STAGES, ingest_source, labels_with_feedback
from router_tasks.routers import ROUTERS
from router_tasks.training.train import train_router
from tela_alerts import dag_failure_alert, record_task_failure
from tela_assets import LABELS_ASSET
from tela_connections import export_connections  # plugins/ is on sys.path
from tela_devices import on_chosen_device
from tela_params import pipeline_params


def stage(fn):
    """A library entry function as one task; its artifact ref travels as a single XCom.
    Bad input or a data-quality verdict fails it at once; other errors are retried."""
    return task(retry.fail_fast(fn), multiple_outputs=False)


def args(step: str) -> dict:
    """The step's keyword arguments, as templates of this DAG's params."""
    return STEP[step].templated()


@task
@retry.fail_fast
def prepare_judge_batch(prompts: dict, answers: dict, judge: dict, judges: list | None, judge_mode: str) -> str:
    """Batch mode: upload the judge calls not yet cached; skipped in online mode or when none are left."""
    from airflow.sdk.exceptions import AirflowSkipException

    from router_tasks.labeling import judge_batch

    if judge_mode != "batch":
        raise AirflowSkipException("judge_mode is online")
    file_id = judge_batch.prepare_judge_batch(prompts, answers, judge=judge, judges=judges)
    if file_id is None:
        raise AirflowSkipException("every judge call is already in the request cache")
    return file_id


@task(trigger_rule="none_failed")
@retry.fail_fast
def collect_judge_batch(batch_id: str | None, judge: dict, judges: list | None) -> dict | None:
    """The finished batch's replies into the request cache (None when the batch was skipped)."""
    from router_tasks.labeling import judge_batch

    return judge_batch.collect_judge_batch(batch_id, judge=judge, judges=judges) if batch_id else None


@task(outlets=[LABELS_ASSET])
def announce_labels(labels: dict) -> dict:
    """Emit the labels Asset: router_retraining runs on the labels this event carries, for
    the models this run's settings name (recorded with them: a scheduled run has no conf)."""
    from router_tasks.lifecycle.loop_settings import run_settings
    from router_tasks.lifecycle.retraining import record_labels

    ctx = get_current_context()
    extra = record_labels(labels, settings=run_settings(ctx["params"]))
    ctx["outlet_events"][LABELS_ASSET].extra = extra
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
    # Every task retries with backoff (plugins/tela_retries.py); LLM and train tasks override it.
    default_args={
        "on_execute_callback": export_connections,
        "on_failure_callback": record_task_failure,
        **retry.DEFAULT,
    },
    on_failure_callback=dag_failure_alert,  # data-quality alert (plugins/tela_alerts.py)
    # every parameter, its default, type and description: the one table, router_tasks/core/params.py
    params=pipeline_params(enums={"router_type": sorted(ROUTERS)}),
)
def router_pipeline():
    llm = dict(pool=defaults.LLM_POOL, **retry.LLM)
    prompts = stage(ingest_source).override(task_id="ingest_prompts")(**args("ingest"))
    referenced = stage(generate_references).override(**llm)(prompts, **args("references"))
    # One mapped task per (shard, model): workers share the work, the pool caps how many
    # call endpoints at once, and a failed part retries alone.
    gen = args("generate")
    parts = (
        stage(generate_part)
        .override(**llm)
        .partial(prompts=prompts, max_tokens=gen["max_tokens"])
        .expand_kwargs(task(plan_generation)(prompts, models=gen["models"]))
    )
    answers = stage(combine_answers).override(task_id="generate_answers")(prompts, parts, models=gen["models"])
    # Batch mode buys the verdicts through the OpenAI Batch API (deferrable wait) into the
    # request cache; the judge parts below then find them there. Online mode skips it.
    judging = args("judge")
    batch_file = prepare_judge_batch(
        referenced, answers, judge=judging["judge"], judges=judging["judges"], judge_mode="{{ params.judge_mode }}"
    )
    batch_run = OpenAITriggerBatchOperator(
        task_id="judge_batch_run",
        file_id=batch_file,
        endpoint=BATCH_ENDPOINT,
        conn_id="{{ params.judge_batch_conn_id }}",
        deferrable=True,
        poll_interval=float(os.environ.get("TELA_BATCH_POLL_SECONDS", defaults.BATCH_POLL_SECONDS)),
        execution_timeout=timedelta(hours=25),  # the Batch API's window is 24 h
        **retry.BATCH_SUBMIT,
    )
    batch = collect_judge_batch(batch_run.output, **args("judge_batch"))
    judge_parts = (
        stage(judge_part)
        .override(**llm)
        .partial(prompts=referenced, answers=answers, **judging)
        .expand_kwargs(task(plan_judging)(referenced))
    )
    batch >> judge_parts
    judgements = stage(combine_judgements).override(task_id="judge_answers")(
        referenced, answers, judge_parts, **judging
    )
    agreement = stage(measure_judge_agreement).override(task_id="judge_agreement", **llm)(
        referenced, answers, judgements, **args("agreement")
    )
    ledger = stage(cost_ledger)(
        {
            "references": referenced,
            "generate": answers,
            "judge_batch": batch,
            "judge": judgements,
            "agreement": agreement,
        }
    )
    labels = stage(labels_with_feedback).override(task_id="build_labels")(
        referenced, judgements, agreement, **args("labels")
    )
    valid = stage(validate_labels)(labels, **args("validate"))
    announce_labels(valid)
    # Routers that need a GPU (causal_llm) train in train_router_gpu (gpu queue, tela_gpu
    # pool), the others in train_router_cpu: exactly one runs, train_router passes its ref on.
    # A fine-tune can run for hours: the timeout frees a worker from a hung one. Scoring a
    # GPU router runs every benchmark prompt through the LLM: like its training, on the gpu
    # queue and pool (batched by the router), bounded by a timeout.
    training = args("train")
    device = dict(router_type=training["router_type"], use_gpu=training["use_gpu"])
    router = on_chosen_device(
        stage(train_router), "train_router", **device, hours=defaults.TRAIN_TIMEOUT_HOURS, **retry.TRAIN
    )(valid, **training)
    evaluation = on_chosen_device(
        stage(evaluate_router), "evaluate_router", **device, hours=defaults.EVALUATE_TIMEOUT_HOURS
    )(router, **args("evaluate"))
    decision = stage(publish_router)(router, evaluation, **args("publish"))
    refs = {
        "ingest": prompts,
        "references": referenced,
        "generate": answers,
        "judge": judgements,
        "agreement": agreement,
        "labels": labels,
        "validate": valid,
        "train": router,
        "evaluate": evaluation,
        "ledger": ledger,
    }
    summary({name: refs[name] for name in SUMMARY_STAGES}, decision)


router_pipeline()
