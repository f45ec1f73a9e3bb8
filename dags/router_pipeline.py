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
import tela_retries as retry
from airflow.providers.openai.operators.openai import OpenAITriggerBatchOperator
from airflow.sdk import Param, dag, get_current_context, task
from tela_alerts import dag_failure_alert, record_task_failure
from tela_assets import LABELS_ASSET
from tela_connections import export_connections  # plugins/ is on sys.path
from tela_params import model_pair_params

from router_tasks.core import defaults
from router_tasks.core.params import PIPELINE_PARAMS
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
from router_tasks.routers.train import train_router
from router_tasks.data.validate import validate_labels


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


@task.branch
def train_on(router_type: str, use_gpu: bool) -> str:
    """The train task to run: GPU routers (causal_llm) go to the gpu queue and pool."""
    from router_tasks.routers.train import train_device

    return f"train_router_{train_device(router_type, use_gpu)}"


@task(task_id="train_router", trigger_rule="none_failed_min_one_success")
def trained_router(on_cpu: dict | None, on_gpu: dict | None) -> dict:
    """The ref of whichever train task ran (the other was skipped: its value is None)."""
    return on_cpu or on_gpu


@task.branch
def evaluate_on(router_type: str, use_gpu: bool) -> str:
    """The evaluate task to run: a GPU router is scored where it trained (gpu queue and pool)."""
    from router_tasks.routers.train import train_device

    return f"evaluate_router_{train_device(router_type, use_gpu)}"


@task(task_id="evaluate_router", trigger_rule="none_failed_min_one_success")
def evaluated_router(on_cpu: dict | None, on_gpu: dict | None) -> dict:
    """The ref of whichever evaluate task ran (see `trained_router`)."""
    return on_cpu or on_gpu


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
    default_args={"on_execute_callback": export_connections, "on_failure_callback": record_task_failure,
                  **retry.DEFAULT},
    on_failure_callback=dag_failure_alert,  # data-quality alert (plugins/tela_alerts.py)
    params={
        "source": Param(defaults.DEMO_PROMPTS, type="string",
                        description="the prompts to label: a jsonl/csv/parquet path on the workers, or an s3:// URI"),
        "sample": Param(None, type=["null", "integer"], description="keep at most this many prompts (empty: all)"),
        # `items` with type object: the trigger form gives a JSON editor (a plain list would
        # be a textarea showing "[object Object]" that breaks the conf on any edit).
        "models": Param(defaults.DEMO_MODELS, type="array", items={"type": "object"},
                        description='OSS endpoints to label, each {"name", "model", "base_url", optional "conn_id" + '
                                    '"api_key_env" (the key from an Airflow connection), "max_tokens", "concurrency", '
                                    'prices}; base_url "local" is the bundled SmolLM2 server'),
        "judge": Param(defaults.DEMO_JUDGE, type="object",
                       description="the judge endpoint that scores every answer (same fields as a models entry; "
                                   '"verdict": auto | logprobs | continue | text, see docs/labeling.md)'),
        "judges": Param(None, type=["null", "array"], items={"type": "object"},
                        description="several judge endpoints instead of `judge`, each asked every answer, "
                                    "their verdicts voted (judge_vote); empty: `judge` alone"),
        "judge_vote": Param("majority", enum=["majority", "mean"],
                            description="how several judges' verdicts combine: the most frequent score, or "
                                        "the mean expected score rounded"),
        "judge_agreement_sample": Param(50, type="integer", minimum=0,
                                        description="gold-graded answers (a seeded sample) also asked of the judge, "
                                                    "to measure its agreement with exact match; 0: none"),
        "judge_min_agreement": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                     description="stop the run when the judge agrees with exact match on fewer "
                                                 "than this share of the sampled answers (empty: the configured "
                                                 "data-quality threshold, off by default)"),
        "judge_mode": Param("online", enum=["online", "batch"],
                            description="batch: the OpenAI Batch API (half price, up to 24 h) through judge_batch_conn_id"),
        "judge_batch_conn_id": Param(defaults.JUDGE_BATCH_CONN_ID, type="string",
                                     description="Airflow OpenAI connection for batch mode (host = the judge's base URL)"),
        "reference_model": Param(defaults.DEMO_REFERENCE, type=["null", "object"],
                                 description="endpoint (the strong model) that writes missing reference answers; null: none"),
        "max_tokens": Param(96, type="integer", minimum=1,
                            description="answer length limit per generated reply (an endpoint's own max_tokens wins)"),
        "include_routellm": Param(True, type="boolean", description="add the bundled RouteLLM labels"),
        "routellm_max_prompts": Param(None, type=["null", "integer"], description="cap bundled prompts per benchmark (quick runs)"),
        "min_rows_per_model": Param(5, type="integer", description="labels needed per model to train"),
        "router_params": Param({}, type="object", description='router settings, e.g. {"k": 50} or, for causal_llm, {"base_model": "/models/Llama-3.2-1B", "device": "cuda"}'),
        "use_gpu": Param(True, type="boolean", description="GPU routers (causal_llm) use a GPU when present; off pins them to the CPU"),
        "router_type": Param(defaults.ROUTER_TYPE, type="string", enum=sorted(ROUTERS),
                             description="the router to train (causal_llm trains on the gpu queue)"),
        **model_pair_params(),
        "eval_max_prompts": Param(None, type=["null", "integer"], description="cap evaluated prompts per benchmark (quick runs)"),
        "strong_quality": Param("labeled", enum=["labeled", "assume_perfect"],
                                description="labeled: the strong model is one of `models`, judged like the others; "
                                            "assume_perfect: never asked for labels, counts as 5/5 (its answer is the reference)"),
        "quality_target": Param(PIPELINE_PARAMS["quality_target"], type="number", exclusiveMinimum=0,
                                maximum=1, description="the evaluation also reports the strong-model calls saved "
                                                       "at this share of the strong model's quality (beside 95%)"),
    },
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
    batch_file = prepare_judge_batch(referenced, answers, judge=judging["judge"], judges=judging["judges"],
                                     judge_mode="{{ params.judge_mode }}")
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
    judgements = stage(combine_judgements).override(task_id="judge_answers")(referenced, answers, judge_parts, **judging)
    agreement = stage(measure_judge_agreement).override(task_id="judge_agreement", **llm)(
        referenced, answers, judgements, **args("agreement"))
    ledger = stage(cost_ledger)({"references": referenced, "generate": answers, "judge_batch": batch, "judge": judgements,
                                 "agreement": agreement})
    labels = stage(labels_with_feedback).override(task_id="build_labels")(
        referenced, judgements, agreement, **args("labels"))
    valid = stage(validate_labels)(labels, **args("validate"))
    announce_labels(valid)
    # Routers that need a GPU (causal_llm) train in train_router_gpu (gpu queue, tela_gpu
    # pool), the others in train_router_cpu: exactly one runs, train_router passes its ref on.
    # A fine-tune can run for hours: the timeout frees a worker from a hung one.
    training = args("train")
    timeout = timedelta(hours=defaults.TRAIN_TIMEOUT_HOURS)
    device = train_on(router_type=training["router_type"], use_gpu=training["use_gpu"])
    on_cpu = stage(train_router).override(task_id="train_router_cpu", execution_timeout=timeout, **retry.TRAIN)(
        valid, **training)
    on_gpu = stage(train_router).override(
        task_id="train_router_gpu", queue=defaults.GPU_QUEUE, pool=defaults.GPU_POOL, execution_timeout=timeout,
        **retry.TRAIN,
    )(valid, **training)
    valid >> device >> [on_cpu, on_gpu]
    router = trained_router(on_cpu, on_gpu)
    # Scoring a GPU router runs every benchmark prompt through the LLM: like its training,
    # on the gpu queue and pool (batched by the router), bounded by a timeout.
    evaluating = args("evaluate")
    eval_timeout = timedelta(hours=defaults.EVALUATE_TIMEOUT_HOURS)
    eval_device = evaluate_on(router_type=training["router_type"], use_gpu=training["use_gpu"])
    ev_cpu = stage(evaluate_router).override(task_id="evaluate_router_cpu", execution_timeout=eval_timeout)(
        router, **evaluating)
    ev_gpu = stage(evaluate_router).override(
        task_id="evaluate_router_gpu", queue=defaults.GPU_QUEUE, pool=defaults.GPU_POOL, execution_timeout=eval_timeout
    )(router, **evaluating)
    router >> eval_device >> [ev_cpu, ev_gpu]
    evaluation = evaluated_router(ev_cpu, ev_gpu)
    decision = stage(publish_router)(router, evaluation, **args("publish"))
    refs = {"ingest": prompts, "references": referenced, "generate": answers, "judge": judgements,
            "agreement": agreement, "labels": labels,
            "validate": valid, "train": router, "evaluate": evaluation, "ledger": ledger}
    summary({name: refs[name] for name in SUMMARY_STAGES}, decision)


router_pipeline()
