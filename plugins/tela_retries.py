"""Airflow task retries for the Tela DAGs, sized per kind of task.

Every task retries with exponential backoff, so a transient error (a 5xx, a dropped S3
connection, a worker lost mid-task) does not fail the run. Stages are idempotent (a
re-run reuses finished artifacts and the request cache keeps every paid reply), so a
retry redoes only what had not finished.

- `DEFAULT`: S3 reads/writes, validation, evaluation, publishing: short outages.
- `LLM`: tasks calling model endpoints: rate limits and provider outages last minutes,
  so more attempts, spaced further apart (the client already retries single requests).
- `TRAIN`: a fine-tune can run for hours: one retry, for a lost worker, not a loop.
- `BATCH_SUBMIT`: creating a Batch API job is not retried by Airflow: a retry would buy
  a second batch; the deferred wait and the collect step are safe to repeat.
"""

from __future__ import annotations

from datetime import timedelta

DEFAULT = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
}
LLM = {
    "retries": 4,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}
TRAIN = {
    "retries": 1,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
BATCH_SUBMIT = {"retries": 0}


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors a retry cannot fix: bad input or config (ValueError, TypeError, LookupError:
    the library's clear-error types), a data-quality verdict, a leakage refusal."""
    from router_tasks.data.quality import DataQualityError
    from router_tasks.evaluation.metrics import LeakageError

    return (ValueError, TypeError, LookupError, DataQualityError, LeakageError)


def fail_fast(fn):
    """`fn` for a task: a permanent error fails the task at once (AirflowFailException, no
    retries spent on it; the original is its __cause__, which the failure alert reads),
    anything else (network, S3, a lost worker) goes to the task's retries."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except permanent_errors() as err:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(err).__name__}: {err}") from err

    return run
