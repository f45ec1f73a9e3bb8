"""The DAG and `tela pipeline` run one description of the stage graph
(`router_tasks.pipeline.STEPS`): the DAG must have a task for every step, wired after the
steps it reads, called with the step's arguments, and the pipeline's parameters and
defaults. A stage or argument added to one entry point and not the other fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_tasks.pipeline import PARAMS, STEP, STEPS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py"))
    assert bag.import_errors == {}
    return bag.get_dag("router_pipeline")


def _op_kwargs(op) -> dict:
    kwargs = dict(getattr(op, "op_kwargs", None) or {})
    partial = getattr(op, "partial_kwargs", None) or {}
    kwargs.update(partial.get("op_kwargs") or {})
    return kwargs


def test_every_step_is_a_dag_task_with_the_steps_arguments(dag):
    for step in STEPS:
        tasks = step.dag_tasks or (step.task_id,)
        missing = [t for t in tasks if t not in dag.task_dict]
        assert not missing, f"step {step.name}: DAG lacks task(s) {missing}"
        given = {}
        for t in tasks:
            given.update({k: v for k, v in _op_kwargs(dag.task_dict[t]).items() if isinstance(v, (str, dict))})
        for kw, template in step.templated().items():
            assert given.get(kw) == template, (
                f"step {step.name}: DAG passes {kw}={given.get(kw)!r}, pipeline {template!r}"
            )


def test_dag_orders_steps_after_their_inputs(dag):
    for step in STEPS:
        upstream = dag.task_dict[step.task_id].get_flat_relative_ids(upstream=True)
        for name in step.inputs:
            assert STEP[name].task_id in upstream, f"{step.task_id} does not run after {STEP[name].task_id}"
    # and the pipeline's list is in an order the DAG allows (no step before one it reads)
    seen = set()
    for step in STEPS:
        assert set(step.inputs) <= seen, f"STEPS lists {step.name} before its inputs {set(step.inputs) - seen}"
        seen.add(step.name)


def test_dag_params_are_the_pipeline_params(dag):
    assert set(dag.params) == set(PARAMS)
    for name, default in PARAMS.items():
        value = dag.params.get_param(name).value
        assert value == (list(default) if isinstance(default, tuple) else default), name


def test_every_dag_param_of_a_pipeline_parameter_is_the_tables_row(airflow_db, dag):
    """Both training DAGs' forms come from the one parameter table (router_tasks/core/params.py):
    each param named like a pipeline parameter has the table's description, default and
    type, or, for the ones router_retraining takes from the loop's settings, empty."""
    from airflow.models import DagBag

    from router_tasks.core.params import BY_NAME, LOOP_EMPTY

    retraining = DagBag(dag_folder=str(REPO / "dags" / "router_retraining.py")).get_dag("router_retraining")
    shared = [(d, name) for d in (dag, retraining) for name in d.params if name in BY_NAME]
    assert {name for d, name in shared if d is retraining} >= {"use_gpu", "strong_model", "weak_model", "benchmarks"}
    for d, name in shared:
        row, param = BY_NAME[name], d.params.get_param(name)
        where = f"{d.dag_id}.{name}"
        if name == "router_params" and d is retraining:
            continue  # retraining's is per router type ({"knn": {...}}): another parameter of the same name
        if param.description.endswith(LOOP_EMPTY):
            assert param.value is None and param.schema["type"] == ["null", row.type], where
            assert param.description == row.help + LOOP_EMPTY, where
        else:
            assert param.value == row.default and param.schema["type"] == row.schema()["type"], where
            assert param.description == row.help, where


def test_a_drifted_dag_is_caught(dag):
    """The check above can fail: a DAG task given another template is reported."""
    op = dag.task_dict["build_labels"]
    saved = dict(op.op_kwargs)
    try:
        op.op_kwargs["strong_quality"] = "{{ params.other }}"
        with pytest.raises(AssertionError, match="strong_quality"):
            test_every_step_is_a_dag_task_with_the_steps_arguments(dag)
    finally:
        op.op_kwargs.clear()
        op.op_kwargs.update(saved)


def test_every_task_retries_with_backoff_sized_per_kind(airflow_db, dag):
    from airflow.models import DagBag

    import tela_retries as retry

    bag = DagBag(dag_folder=str(REPO / "dags"))
    for d in bag.dags.values():
        for t in d.tasks:
            if t.task_id == "judge_batch_run":
                assert t.retries == 0, "re-submitting a Batch API job would pay for it twice"
                continue
            assert t.retries >= 1 and t.retry_exponential_backoff > 0, f"{d.dag_id}.{t.task_id}"
    llm_tasks = ["generate_references", "generate_part", "judge_part"]
    assert all(dag.task_dict[t].retries == retry.LLM["retries"] for t in llm_tasks)
    assert dag.task_dict["train_router_gpu"].retries == retry.TRAIN["retries"] < retry.LLM["retries"]
