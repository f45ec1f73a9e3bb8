"""Drift: every hour, compare the last window of gateway traffic with what the champion
was trained on; on drift, emit the drift Asset (its extra carries the evidence and the
exported traffic sample), which schedules `router_drift_relabel`: it starts
`router_pipeline` on that sample with the champion's recorded settings (its endpoints,
judge, reference model and model pair; the Variable `tela_loop_settings` overrides them,
and the run logs where each came from), so the traffic is labeled the way the champion's
labels were; the pipeline's labels Asset then schedules `router_retraining`. Strong-share
drift alone recalibrates the threshold instead.

Thin wiring only: the logic is `router_tasks.serving.drift` and `.traffic`.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

import tela_retries as retry
from router_tasks.serving import drift
from tela_assets import DRIFT_ASSET
from tela_connections import export_connections  # plugins/ is on sys.path


@task
def check_window() -> dict:
    from router_tasks.core.schemas import CHAMPION_KEY
    from router_tasks.core.store import ArtifactStore

    ctx = get_current_context()
    p = ctx["params"]
    if p["router"] == "champion" and not ArtifactStore().exists(CHAMPION_KEY):
        # the hourly run of a fresh deployment: nothing is served yet, so nothing can drift
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("no champion yet: nothing to compare the traffic with")
    end = p["window_end"] or ctx.get("data_interval_end")
    return drift.check_latest_window(
        window_end=end, hours=float(p["window_hours"]), router=p["router"], settings=p["settings"]
    )


@task
def recalibrate(decision: dict) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from router_tasks.core.store import ArtifactStore
    from router_tasks.serving.traffic import read_window

    if decision["action"] != "recalibrate":
        raise AirflowSkipException(f"no recalibration: {decision['action']} ({decision['reason']})")
    traffic = read_window(ArtifactStore(), *decision["window"])
    return drift.recalibrate_on_traffic(traffic, get_current_context()["params"]["router"])


@task(outlets=[DRIFT_ASSET])
def announce_drift(decision: dict) -> dict:
    """Success emits the drift Asset event: only when the decision is to retrain."""
    from airflow.sdk.exceptions import AirflowSkipException

    if decision["action"] != "retrain":
        raise AirflowSkipException(f"no retraining: {decision['action']} ({decision['reason']})")
    ctx = get_current_context()
    extra = {
        "evidence": decision["evidence"],
        "relabel": drift.relabel_request(decision["evidence"], sample=int(ctx["params"]["relabel_sample"])),
    }
    ctx["outlet_events"][DRIFT_ASSET].extra = extra
    return extra


@dag(
    dag_id="router_drift",
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # the hysteresis state is read and written by one run at a time
    tags=["tela-wizard"],
    default_args={"on_execute_callback": export_connections, **retry.DEFAULT},
    params={
        "router": Param("champion", type="string", description="router whose training prompts are the reference"),
        "window_hours": Param(
            1.0, type="number", description="traffic window length, ending at the run's interval end"
        ),
        "window_end": Param(None, type=["null", "string"], description="ISO time; empty: the run's interval end / now"),
        "settings": Param({}, type="object", description="drift settings (alpha, clear_windows, cooldown_hours, ...)"),
        "relabel_sample": Param(200, type="integer", description="traffic prompts to label on drift"),
    },
)
def router_drift():
    decision = check_window()
    recalibrate(decision)
    announce_drift(decision)


router_drift()


@task(inlets=[DRIFT_ASSET], multiple_outputs=True)
@retry.fail_fast  # a bad Variable or recorded setting fails the same way every time
def pipeline_conf() -> dict:
    """router_pipeline's conf: the triggering event's traffic sample as `source`, with the
    champion's recorded settings under the Variable `tela_loop_settings` and the
    `pipeline_conf` param (a manual run's). A manual run takes the newest drift event.
    Returns {"conf", "settings_from"}: each setting and where it came from (also logged)."""
    from airflow.sdk import Variable

    from router_tasks.lifecycle.loop_settings import VARIABLE, describe, relabel_conf

    ctx = get_current_context()
    events = [e for evs in (ctx.get("triggering_asset_events") or {}).values() for e in evs]
    if not events:
        events = list(ctx["inlet_events"][DRIFT_ASSET])
    if not events:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("no drift event to act on")
    relabel = events[-1].extra["relabel"]
    plan = relabel_conf(
        relabel["source"],
        variable=Variable.get(VARIABLE, default=None, deserialize_json=True),
        conf=ctx["params"]["pipeline_conf"],
    )
    print(f"labeling {relabel['source']} with:\n{describe(plan)}")
    return {"conf": plan["conf"], "settings_from": plan["from"]}


@dag(
    dag_id="router_drift_relabel",
    schedule=[DRIFT_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["tela-wizard"],
    # the S3 connection: the champion's recorded settings are read from the artifact store
    default_args={"on_execute_callback": export_connections, **retry.DEFAULT},
    params={
        "pipeline_conf": Param(
            {},
            type="object",
            description="router_pipeline params for labeling traffic (models, judge, ...), "
            "over the champion's recorded settings and Variable tela_loop_settings; "
            "a scheduled run has only this default: {}",
        )
    },
)
def router_drift_relabel():
    TriggerDagRunOperator(task_id="label_traffic", trigger_dag_id="router_pipeline", conf=pipeline_conf()["conf"])


router_drift_relabel()
