"""Airflow-only glue: a data-quality alert when a pipeline run fails.

Two callbacks work together, because a DAG-level callback runs after the task process is
gone and never sees the exception:
- `record_task_failure` (task `on_failure_callback`, in the task process): turns the
  exception into a small JSON-able record (for a `DataQualityError`: each failed rule with
  its observed value, and the Data Docs link) and pushes it as the XCom `tela_failure`;
- `dag_failure_alert` (DAG `on_failure_callback`): reads that record for the failed task
  and sends one alert naming the DAG run, the stage, the failed expectations and the
  Data Docs link, through the notifier chosen by config.

Config: a JSON object in the environment variable `TELA_ALERTS`, else in the Airflow
Variable `tela_alerts`; no config, no alert (logged):
- `{"notifier": "webhook", "url": "https://...", "headers": {...}}`: HTTP POST of the
  JSON payload (`build_payload`);
- `{"notifier": "slack", "conn_id": "slack_alerts"}` uses the Slack provider's
  `SlackWebhookNotifier` when that provider is installed; `{"notifier": "slack",
  "webhook_url": "https://hooks.slack.com/..."}` posts `{"text": ...}` to an incoming
  webhook directly (no provider needed);
- `{"notifier": "smtp", "to": ["a@b.c"], "conn_id": "smtp_default", "from_email": ...}`:
  the SMTP provider's `SmtpNotifier`.
A failing notifier is logged, never raised: the run has already failed for its own reason.
"""

from __future__ import annotations

import html
import json
import logging
import os

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

XCOM_KEY = "tela_failure"
CONFIG_ENV = "TELA_ALERTS"
CONFIG_VARIABLE = "tela_alerts"
MAX_MESSAGE_CHARS = 4000


# --- the task side ------------------------------------------------------------------


def failure_record(exc: BaseException | None) -> dict:
    """What the alert needs from an exception; JSON-able and small enough for an XCom."""
    if exc is None:
        return {"error_type": None, "message": None, "failures": [], "data_docs": None}
    if type(exc).__name__ == "AirflowFailException" and exc.__cause__ is not None:
        exc = exc.__cause__  # tela_retries.fail_fast: the library's own error is the cause
    failures = getattr(exc, "failures", None) or []
    return {
        "error_type": type(exc).__name__,
        "message": str(exc)[:MAX_MESSAGE_CHARS],
        "failures": json.loads(json.dumps(failures[:50], default=str)),
        "data_docs": getattr(exc, "data_docs", None),
        "stage": getattr(exc, "stage", None),
        "kind": getattr(exc, "kind", None),
    }


def record_task_failure(context) -> None:
    """`on_failure_callback` for every pipeline task: keep the failure for the DAG alert."""
    try:
        context["ti"].xcom_push(key=XCOM_KEY, value=failure_record(context.get("exception")))
    except Exception:  # an alert must never mask the task's own error
        log.exception("could not record the task failure for the alert")


# --- the DAG side -------------------------------------------------------------------


def _xcom_from_db(dag_id: str, run_id: str, task_id: str):
    """Where no task-execution channel exists (`dag.test()`, scheduler-side callbacks),
    the DAG callback process still reaches the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, key=XCOM_KEY, task_ids=task_id, dag_ids=dag_id, limit=1)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _failed_task_record(context) -> tuple[str | None, dict]:
    ti = context.get("ti") or context.get("task_instance")
    task_id = getattr(ti, "task_id", None)
    if ti is None:
        return None, {}
    try:  # the task-SDK way (DAG processor with its supervisor channel)
        return task_id, ti.xcom_pull(task_ids=task_id, key=XCOM_KEY) or {}
    except Exception as err:
        log.info("xcom_pull unavailable in this callback (%s); reading the metadata DB", type(err).__name__)
    try:
        dag_id = getattr(context.get("dag"), "dag_id", None) or ti.dag_id
        return task_id, _xcom_from_db(dag_id, ti.run_id, task_id) or {}
    except Exception:
        log.exception("could not read the failure record of %s", task_id)
        return task_id, {}


def build_payload(context) -> dict:
    """The alert: DAG run, stage (failed task), failed expectations with observed values,
    Data Docs link, and a readable `text`."""
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or context.get("dag_id")
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", None)
    task_id, record = _failed_task_record(context)
    failures = [
        {
            k: f.get(k)
            for k in ("rule", "expectation", "kwargs", "observed", "unexpected_count", "unexpected_sample")
            if k in f
        }
        for f in record.get("failures") or []
    ]
    dq = bool(failures) or record.get("error_type") == "DataQualityError"
    payload = {
        "event": "tela.data_quality_failure" if dq else "tela.pipeline_failure",
        "dag_id": dag_id,
        "run_id": run_id,
        "reason": context.get("reason"),
        "stage": task_id,
        "error_type": record.get("error_type"),
        "error": record.get("message"),
        "failed_expectations": failures,
        "data_docs": record.get("data_docs"),
    }
    payload["text"] = format_text(payload)
    return payload


def format_text(p: dict) -> str:
    head = "Data-quality failure" if p["event"] == "tela.data_quality_failure" else "Pipeline failure"
    lines = [f"{head}: DAG {p['dag_id']} run {p['run_id']}, stage {p['stage']}"]
    for f in p["failed_expectations"]:
        lines.append(
            f"- {f.get('rule')}: observed {f.get('observed')!r}"
            + (f" ({f['unexpected_count']} unexpected)" if f.get("unexpected_count") else "")
        )
    if not p["failed_expectations"] and p.get("error"):
        lines.append(f"{p.get('error_type')}: {p['error'].splitlines()[0][:500]}")
    if p.get("data_docs"):
        lines.append(f"Data Docs: {p['data_docs']}")
    return "\n".join(lines)


class WebhookNotifier(BaseNotifier):
    """POST a JSON body (the payload, or `{"text": ...}` in Slack mode) to a URL."""

    template_fields = ("url",)

    def __init__(self, url: str, *, headers: dict | None = None, slack: bool = False, timeout: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.url = url
        self.headers = headers or {}
        self.slack = slack
        self.timeout = timeout

    def notify(self, context) -> None:
        import requests

        payload = context.get("tela_alert") or build_payload(context)
        body = {"text": payload["text"]} if self.slack else payload
        resp = requests.post(self.url, json=body, headers=self.headers, timeout=self.timeout)
        resp.raise_for_status()


def load_config() -> dict | None:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        try:
            from airflow.sdk import Variable

            text = Variable.get(CONFIG_VARIABLE, default=None)
        except Exception:  # no Variable backend reachable here: treat as unset
            text = None
    if not text:
        return None
    cfg = json.loads(text) if isinstance(text, str) else dict(text)
    if not isinstance(cfg, dict) or cfg.get("notifier") not in ("webhook", "slack", "smtp", "none"):
        raise ValueError(
            f"{CONFIG_ENV}/{CONFIG_VARIABLE}: expected {{'notifier': 'webhook'|'slack'|'smtp'|'none', ...}}, "
            f"got {text!r:.200}"
        )
    return cfg


def make_notifier(cfg: dict, payload: dict) -> BaseNotifier | None:
    kind = cfg["notifier"]
    if kind == "none":
        return None
    if kind == "webhook":
        return WebhookNotifier(cfg["url"], headers=cfg.get("headers"))
    if kind == "slack":
        if cfg.get("conn_id"):
            try:
                from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
            except ImportError:
                raise RuntimeError(
                    "slack notifier with conn_id needs apache-airflow-providers-slack; "
                    "or give webhook_url to post to an incoming webhook directly"
                ) from None
            return SlackWebhookNotifier(slack_webhook_conn_id=cfg["conn_id"], text=payload["text"])
        return WebhookNotifier(cfg["webhook_url"], slack=True)
    if kind == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = "<pre>" + html.escape(payload["text"]) + "</pre>"
        if payload.get("error") and payload["failed_expectations"]:
            body += "<h4>Full error</h4><pre>" + html.escape(payload["error"]) + "</pre>"
        return SmtpNotifier(
            to=cfg["to"],
            from_email=cfg.get("from_email"),
            subject=f"[tela] {payload['event']}: {payload['dag_id']} / {payload['stage']}",
            html_content=body,
            smtp_conn_id=cfg.get("conn_id"),
        )
    raise ValueError(f"unknown notifier {kind!r}")


def dag_failure_alert(context) -> dict | None:
    """DAG `on_failure_callback`: send the alert; returns the payload sent (for logs/tests)."""
    try:
        cfg = load_config()
        if cfg is None:
            log.warning("run failed; no alert sent (set %s or the Airflow Variable %s)", CONFIG_ENV, CONFIG_VARIABLE)
            return None
        payload = build_payload(context)
        notifier = make_notifier(cfg, payload)
        if notifier is None:
            return None
        context = {**context, "tela_alert": payload}
        # notify(), not __call__: the message holds user text, which must not be rendered
        # as a Jinja template.
        notifier.notify(context)
        log.info("data-quality alert sent via %s for %s", cfg["notifier"], payload["run_id"])
        return payload
    except Exception:
        log.exception("sending the failure alert failed")
        return None
