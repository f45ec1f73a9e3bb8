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

import os
from datetime import timedelta

#: multiplies every delay below (read when the DAG file is parsed): a test deployment sets
#: it low so that a retry after an injected fault comes back in seconds, not minutes
DELAY_SCALE = float(os.environ.get("TELA_RETRY_DELAY_SCALE", "1"))


def _kind(retries: int, delay: timedelta, max_delay: timedelta) -> dict:
    return {
        "retries": retries,
        "retry_delay": delay * DELAY_SCALE,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": max_delay * DELAY_SCALE,
    }


DEFAULT = _kind(2, timedelta(seconds=20), timedelta(minutes=5))
LLM = _kind(4, timedelta(minutes=1), timedelta(minutes=30))
TRAIN = _kind(1, timedelta(minutes=2), timedelta(minutes=10))
BATCH_SUBMIT = {"retries": 0}


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Errors a retry cannot fix: bad input or config (ValueError, TypeError, LookupError:
    the library's clear-error types), an endpoint whose API key is missing, a data-quality
    verdict, a leakage refusal."""
    from router_tasks.core.endpoints import MissingEndpointKey
    from router_tasks.data.quality import DataQualityError
    from router_tasks.evaluation.metrics import LeakageError

    return (ValueError, TypeError, LookupError, MissingEndpointKey, DataQualityError, LeakageError)


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
