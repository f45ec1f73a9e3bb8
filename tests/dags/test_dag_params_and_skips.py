"""What a user meets in the UI trigger form, and retraining with nothing to retrain on."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bag(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.mark.parametrize("dag_id", ["router_pipeline", "router_retraining"])
def test_every_param_has_a_description_and_arrays_say_what_they_hold(bag, dag_id):
    dag = bag.get_dag(dag_id)
    for name, _param in dag.params.items():
        p = dag.params.get_param(name)
        schema = p.schema
        assert (p.description or "").strip(), f"{dag_id}.{name} has no description"
        if schema.get("type") == "array":
            # the form gives a JSON editor only when items has a non-string type; a list of
            # objects without it shows "[object Object]"
            assert "items" in schema, f"{dag_id}.{name}: array without items"
            default = dag.params[name]
            if default and isinstance(default[0], dict):
                assert schema["items"]["type"] == "object", f"{dag_id}.{name}"


def test_failures_alert_in_both_dags(bag):
    from tela_alerts import dag_failure_alert, record_task_failure

    for dag_id in ("router_pipeline", "router_retraining"):
        dag = bag.get_dag(dag_id)
        assert dag.on_failure_callback in (dag_failure_alert, [dag_failure_alert]), dag_id
        for t in dag.tasks:
            cbs = t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback]
            assert record_task_failure in cbs, f"{dag_id}.{t.task_id}"


@pytest.mark.slow
def test_retraining_with_no_labels_yet_is_skipped_not_failed(bag, tmp_path, monkeypatch):
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", str(tmp_path / "empty-store"))
    dr = bag.get_dag("router_retraining").test()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "success", states
    assert states["resolve_labels"] == "skipped"
    assert set(states.values()) == {"skipped"}, states


def test_retraining_with_a_missing_labels_param_fails(bag, tmp_path, monkeypatch):
    """An explicit labels ref that does not exist is a real failure, not 'nothing to do'."""
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", str(tmp_path / "empty-store"))
    dr = bag.get_dag("router_retraining").test(run_conf={"labels": "stages/validate/nope"})
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "failed" and states["resolve_labels"] == "failed", states
