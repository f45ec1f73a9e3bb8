"""Retraining: train -> evaluate -> publish, when new labels arrive or weekly, whichever
comes first.

Thin wiring only (the logic is `router_tasks.training.train`, `.evaluate`, `.retraining`). Scheduled
by the labels Asset (an event whose extra is `{"labels": ref, "settings": ...}`, see
`router_tasks.lifecycle.retraining.record_labels`) OR a weekly cron; a cron or manual run without an
event trains on the `labels` param, else the newest recorded labels. `loop_settings` decides
the model pair and the evaluation from the settings recorded with those labels and with the
champion, under the Variable `tela_loop_settings` and the run's params (a scheduled run has
only defaults, which name the demo's pair); it logs each value and where it came from, and the
champion keeps them. One router is trained
and evaluated per entry of `router_types` (mapped tasks); the best goes up against the
champion. Types that need a GPU (`router_tasks.routers.GPU_ROUTERS`: causal_llm) train in
`train_router_gpu`, on the `gpu` queue and in the `tela_gpu` pool; the others in
`train_router_cpu`; `trained_routers` puts both back in the param's order. `publish`
declares the champion-router Asset as its outlet and is skipped when the champion is
kept, so an Asset event always means a new champion.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)

import tela_retries as retry
from router_tasks.core import defaults
from router_tasks.evaluation.compare import compare_routers
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.training.train import train_router
from tela_alerts import dag_failure_alert, record_task_failure
from tela_assets import LABELS_ASSET, ROUTER_ASSET
from tela_connections import export_connections  # plugins/ is on sys.path
from tela_devices import on_each_device
from tela_params import MODEL_PAIR, pipeline_params


@task
def resolve_labels() -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from router_tasks.core.store import ArtifactStore
    from router_tasks.lifecycle.retraining import LATEST_LABELS_KEY
    from router_tasks.lifecycle.retraining import resolve_labels as resolve

    ctx = get_current_context()
    extras = [e.extra for events in (ctx.get("triggering_asset_events") or {}).values() for e in events]
    given = ctx["params"]["labels"] not in (None, "", {}) or any((x or {}).get("labels") for x in extras)
    if not given and not ArtifactStore().exists(LATEST_LABELS_KEY):
        # A cron (or first unpause) run before router_pipeline ever published labels:
        # nothing to retrain on is not a failure. Everything downstream is skipped too.
        raise AirflowSkipException("no labels yet: router_pipeline has not produced any")
    return resolve(ctx["params"]["labels"], extras)


@task
@retry.fail_fast  # labels for neither model of the pair: a config error, not a transient one
def loop_settings(labels: dict) -> dict:
    """{"settings", "from"}: what this run trains for and how it evaluates, and where each came from."""
    from airflow.sdk import Variable

    from router_tasks.lifecycle.loop_settings import VARIABLE
    from router_tasks.lifecycle.retraining import retraining_settings

    ctx = get_current_context()
    extras = [e.extra for events in (ctx.get("triggering_asset_events") or {}).values() for e in events]
    params = ctx["params"]
    return retraining_settings(
        labels,
        extras,
        variable=Variable.get(VARIABLE, default=None, deserialize_json=True),
        params={k: params[k] for k in ("strong_model", "weak_model", "benchmarks")},
    )


@task
def router_types(labels: dict) -> dict:  # after resolve_labels: skipped with it
    from router_tasks.lifecycle.retraining import split_by_device

    params = get_current_context()["params"]
    return split_by_device(params["router_types"], use_gpu=params["use_gpu"])


@task
def cpu_types(split: dict) -> list[str]:
    return split["cpu"]


@task
def gpu_types(split: dict) -> list[str]:
    return split["gpu"]


def train(labels: dict, router_type: str, loop: dict) -> dict:
    # Not `task(train_router)`: its `params` argument would receive the DAG params (Airflow
    # injects context entries by argument name), which no router accepts.
    params, settings = get_current_context()["params"], loop["settings"]
    return train_router(
        labels,
        router_type=router_type,
        strong_model=settings["strong_model"],
        weak_model=settings["weak_model"],
        strong_quality=settings["strong_quality"],
        router_params=params["router_params"].get(router_type),
        use_gpu=params["use_gpu"],
    )


def evaluate(router: dict, loop: dict) -> dict:
    settings = loop["settings"]
    return evaluate_router(
        router, benchmarks=settings["benchmarks"], max_prompts=settings["eval_max_prompts"], models=settings["models"]
    )


@task(outlets=[ROUTER_ASSET])
def publish(routers, evaluations, loop: dict) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from router_tasks.lifecycle.retraining import publish_best

    ctx = get_current_context()
    # index mapped results instead of iterating them (iteration logs spurious XCom errors)
    decision = publish_best(
        [routers[i] for i in range(len(routers))],
        [evaluations[i] for i in range(len(evaluations))],
        metric=ctx["params"]["metric"],
        margin=float(ctx["params"]["margin"]),
        settings=loop,
    )
    if not decision["promoted"]:
        # success would emit an Asset event: downstream waits for a *new* champion only
        raise AirflowSkipException(f"champion kept: {decision['reason']}")
    ctx["outlet_events"][ROUTER_ASSET].extra = {"router": decision["router"], "score": decision["score"]}
    return decision


@dag(
    dag_id="router_retraining",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(defaults.RETRAIN_CRON, timezone="UTC"),
        assets=[LABELS_ASSET],
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two retrainings at once would race for the champion pointer
    render_template_as_native_obj=True,
    tags=["tela-wizard"],
    # every task retries with backoff (plugins/tela_retries.py); training overrides it; the
    # same failure alert as router_pipeline (plugins/tela_alerts.py)
    default_args={
        "on_execute_callback": export_connections,
        "on_failure_callback": record_task_failure,
        **retry.DEFAULT,
    },
    on_failure_callback=dag_failure_alert,
    params={
        "labels": Param(
            None,
            type=["null", "string"],
            description="labels artifact (ref JSON, key or URI); empty: the triggering or newest labels",
        ),
        "router_types": Param(
            defaults.RETRAIN_ROUTER_TYPES,
            type="array",
            items={"type": "string"},
            description="one router trained per type (one per line), e.g. knn, ensemble, causal_llm",
        ),
        **pipeline_params(["use_gpu"]),
        "router_params": Param(
            {}, type="object", description='per router type, e.g. {"knn": {"k": 20}}; defaults otherwise'
        ),
        **pipeline_params(MODEL_PAIR, from_loop=MODEL_PAIR),
        "metric": Param(defaults.PUBLISH_METRIC, type="string", description="'mean_apgr' or 'apgr:<benchmark>'"),
        "margin": Param(0.0, type="number", description="how much the challenger must beat the champion by"),
    },
)
def router_retraining():
    labels = resolve_labels()
    loop = loop_settings(labels)
    split = router_types(labels)
    # GPU router types (causal_llm) train and are scored on the gpu queue and pool, the others
    # on the default queue; trained_routers and evaluate_router put both back in the param's order
    types = {"cpu": cpu_types(split), "gpu": gpu_types(split)}
    routers = on_each_device(
        task(train),
        "train_router",
        split,
        {"router_type": types},
        merged_id="trained_routers",
        fixed=dict(labels=labels, loop=loop),
        hours=defaults.TRAIN_TIMEOUT_HOURS,
        **retry.TRAIN,
    )
    evaluations = on_each_device(
        task(evaluate),
        "evaluate_router",
        split,
        {"router": routers.by_device},
        fixed=dict(loop=loop),
        hours=defaults.EVALUATE_TIMEOUT_HOURS,
    ).merged
    task(compare_routers)(evaluations)  # every router's curve on one plot per benchmark
    publish(routers.merged, evaluations, loop)


router_retraining()
