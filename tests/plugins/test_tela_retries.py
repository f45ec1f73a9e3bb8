"""Task retries: permanent errors fail at once, transient ones go to Airflow's retries."""

from __future__ import annotations

import inspect

import pytest
from airflow.sdk.exceptions import AirflowFailException

import tela_retries as retry
from router_tasks.data.quality import DataQualityError
from tela_alerts import failure_record


def _stage(x: int, *, source: str = "a") -> dict:
    if source == "bad":
        raise ValueError("row 3: prompt is blank")
    if source == "dq":
        raise DataQualityError("labels failed 1 rule", [{"rule": "label_columns"}])
    if source == "net":
        raise ConnectionError("connection reset by peer")
    return {"x": x}


def test_fail_fast_keeps_the_signature_and_the_result():
    wrapped = retry.fail_fast(_stage)
    assert wrapped.__name__ == "_stage" and inspect.signature(wrapped) == inspect.signature(_stage)
    assert wrapped(1) == {"x": 1}


def test_permanent_errors_fail_at_once_and_the_alert_still_sees_them():
    with pytest.raises(AirflowFailException, match="row 3: prompt is blank") as bad:
        retry.fail_fast(_stage)(1, source="bad")
    assert isinstance(bad.value.__cause__, ValueError)
    with pytest.raises(AirflowFailException) as dq:
        retry.fail_fast(_stage)(1, source="dq")
    record = failure_record(dq.value)
    assert record["error_type"] == "DataQualityError" and record["failures"] == [{"rule": "label_columns"}]


def test_transient_errors_are_left_to_the_retries():
    with pytest.raises(ConnectionError):
        retry.fail_fast(_stage)(1, source="net")


def test_a_missing_endpoint_key_fails_at_once_naming_what_was_looked_for():
    from router_tasks.core.endpoints import Endpoint, MissingEndpointKey

    ep = Endpoint.from_dict(
        {
            "name": "acme-large",
            "model": "large",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": "ACME_KEY_NOT_SET_ANYWHERE",
            "conn_id": "acme_conn",
        }
    )
    with pytest.raises(AirflowFailException) as err:
        retry.fail_fast(ep.api_key)()
    cause = err.value.__cause__
    assert isinstance(cause, MissingEndpointKey)
    for named in ("'acme-large'", "ACME_KEY_NOT_SET_ANYWHERE", "'acme_conn'"):
        assert named in str(err.value), named
    assert failure_record(err.value)["error_type"] == "MissingEndpointKey"
