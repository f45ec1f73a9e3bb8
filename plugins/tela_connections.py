"""Airflow-only glue: turn Airflow connections into the environment the library reads.

The library never imports Airflow, so secrets reach it as environment variables of the
task process, set here just before the task runs (an `on_execute_callback`):
- the S3 connection (`TELA_S3_CONN_ID`, default `tela_s3`, an `aws` connection whose
  extra holds `endpoint_url` for MinIO/moto): AWS keys + `TELA_S3_ENDPOINT_URL`;
- every LLM endpoint in the run's params (`models`, `judge`, `reference_model`) that names a `conn_id`: the
  connection's password goes to the endpoint's `api_key_env` variable.
Nothing here is logged, and nothing is written to artifacts.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException and friends: the connection is optional
        return None


def export_s3_connection() -> None:
    conn = _connection(os.environ.get("TELA_S3_CONN_ID", "tela_s3"))
    if conn is None:
        return
    extra = conn.extra_dejson or {}
    if conn.login:
        os.environ["AWS_ACCESS_KEY_ID"] = conn.login
    if conn.password:
        os.environ["AWS_SECRET_ACCESS_KEY"] = conn.password
    if extra.get("endpoint_url"):
        os.environ["TELA_S3_ENDPOINT_URL"] = extra["endpoint_url"]
    if extra.get("region_name"):
        os.environ["AWS_DEFAULT_REGION"] = extra["region_name"]


def export_endpoint_connections(params: dict) -> None:
    endpoints = list(params.get("models") or [])
    for single in ("judge", "reference_model"):
        if params.get(single):
            endpoints.append(params[single])
    for ep in endpoints:
        if not isinstance(ep, dict) or not ep.get("conn_id"):
            continue
        conn = _connection(ep["conn_id"])
        if conn is None:
            # Not raised here: Airflow logs a callback's exception and runs the task anyway.
            # The task's first call then fails at once (MissingEndpointKey, no retries),
            # naming the endpoint, its variable and this connection.
            log.warning("endpoint %r: Airflow connection %r not found", ep.get("name"), ep["conn_id"])
            continue
        if ep.get("api_key_env") and conn.password:
            os.environ[ep["api_key_env"]] = conn.password


def export_connections(context) -> None:
    """`on_execute_callback` for every pipeline task."""
    export_s3_connection()
    export_endpoint_connections(context.get("params") or {})
