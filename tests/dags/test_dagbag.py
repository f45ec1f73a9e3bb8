"""The DAG folder imports cleanly and the pipeline is wired in stage order."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dags_import_without_errors(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("router_pipeline")
    assert dag is not None

    order = [
        "ingest_prompts",
        "generate_answers",
        "judge_answers",
        "build_labels",
        "validate_labels",
        "train_on",
        "train_router_cpu",
        "train_router",
        "evaluate_on",
        "evaluate_router_cpu",
        "evaluate_router",
        "publish_router",
        "summary",
    ]
    assert set(order) <= set(dag.task_ids)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert upstream in dag.get_task(downstream).upstream_task_ids, f"{upstream} -> {downstream} missing"
    for upstream, downstream in [
        ("validate_labels", "train_router_gpu"),
        ("train_on", "train_router_gpu"),
        ("train_router_gpu", "train_router"),
    ]:
        assert upstream in dag.get_task(downstream).upstream_task_ids, f"{upstream} -> {downstream} missing"
    assert {"source", "models", "judge", "router_type", "use_gpu", "benchmarks"} <= set(dag.params)


def test_labeling_is_mapped_over_parts_and_shares_the_llm_pool(airflow_db):
    from airflow.models import DagBag
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from router_tasks.core import defaults

    dag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py")).get_dag("router_pipeline")
    for mapped, plan, combine in (
        ("generate_part", "plan_generation", "generate_answers"),
        ("judge_part", "plan_judging", "judge_answers"),
    ):
        op = dag.get_task(mapped)
        assert isinstance(op, MappedOperator) and op.pool == defaults.LLM_POOL
        assert plan in op.upstream_task_ids and mapped in dag.get_task(combine).upstream_task_ids
    assert dag.get_task("generate_references").pool == defaults.LLM_POOL
    # batch mode: prepare -> deferrable Batch API operator -> collect -> judge parts
    run = dag.get_task("judge_batch_run")
    assert type(run).__name__ == "OpenAITriggerBatchOperator" and run.deferrable
    assert "prepare_judge_batch" in run.upstream_task_ids
    assert "judge_batch_run" in dag.get_task("collect_judge_batch").upstream_task_ids
    assert dag.get_task("collect_judge_batch").trigger_rule == "none_failed"
    assert "collect_judge_batch" in dag.get_task("judge_part").upstream_task_ids
    assert {"judge_answers", "generate_answers"} <= dag.get_task("cost_ledger").upstream_task_ids
    assert "cost_ledger" in dag.get_task("summary").upstream_task_ids
    assert {"judge_mode", "judge_batch_conn_id", "reference_model"} <= set(dag.params)


def test_gpu_routers_train_on_the_gpu_queue_and_pool(airflow_db):
    """Exactly one train task runs: the branch picks the GPU one for GPU routers."""
    from datetime import timedelta

    from airflow.models import DagBag

    from router_tasks.core import defaults

    dag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py")).get_dag("router_pipeline")
    gpu, cpu = dag.get_task("train_router_gpu"), dag.get_task("train_router_cpu")
    assert (gpu.queue, gpu.pool) == ("gpu", "tela_gpu") == (defaults.GPU_QUEUE, defaults.GPU_POOL)
    assert gpu.execution_timeout == cpu.execution_timeout == timedelta(hours=defaults.TRAIN_TIMEOUT_HOURS)
    assert (cpu.queue, cpu.pool) == ("default", "default_pool")
    assert dag.get_task("train_router").trigger_rule == "none_failed_min_one_success"
    # and is evaluated there: batched GPU scoring, bounded by a timeout
    egpu, ecpu = dag.get_task("evaluate_router_gpu"), dag.get_task("evaluate_router_cpu")
    assert (egpu.queue, egpu.pool) == (defaults.GPU_QUEUE, defaults.GPU_POOL)
    assert (ecpu.queue, ecpu.pool) == ("default", "default_pool")
    assert egpu.execution_timeout == ecpu.execution_timeout == timedelta(hours=defaults.EVALUATE_TIMEOUT_HOURS)
    assert {"evaluate_on", "train_router"} <= egpu.upstream_task_ids
    assert dag.get_task("evaluate_router").upstream_task_ids == {"evaluate_router_cpu", "evaluate_router_gpu"}
    assert dag.get_task("evaluate_router").trigger_rule == "none_failed_min_one_success"


def test_pools_exist_in_the_airflow_db(airflow_db):
    """dag.test() runs a task whose pool is missing, but the scheduler never schedules it:
    the DB set-up (make airflow-db, this fixture, docker-compose) must create the pools."""
    from airflow.models.pool import Pool

    from router_tasks.core import defaults

    gpu, llm = Pool.get_pool(defaults.GPU_POOL), Pool.get_pool(defaults.LLM_POOL)
    assert (gpu.pool, gpu.slots) == ("tela_gpu", 1)
    assert (llm.pool, llm.slots) == ("tela_llm", 4)
    assert llm.description == "LLM API calls: tasks calling paid endpoints at once"


def test_dag_file_does_not_import_heavy_libraries():
    """Parsing runs often in the DAG processor: torch, transformers and GX stay in tasks.

    (`openai` is allowed: the provider's OpenAITriggerBatchOperator, which the DAG must
    instantiate for judge batch mode, imports it; about 1 s, against ~10 s for torch.)"""
    import subprocess
    import sys

    code = (
        f"import sys, runpy; sys.path[:0]=['{REPO}', '{REPO}/plugins']; "
        f"runpy.run_path('{REPO}/dags/router_pipeline.py');"
        "heavy=[m for m in ('torch','transformers','great_expectations','sentence_transformers') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_every_task_reaches_the_artifact_store_through_the_connection(airflow_db):
    """On a deployment the S3 keys and endpoint come from the `tela_s3` connection, exported
    by `export_connections` before each task: a task without it cannot read the store."""
    from airflow.models import DagBag

    from tela_connections import export_connections

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert {"router_pipeline", "router_retraining", "router_drift", "router_drift_relabel"} <= set(bag.dags)
    for dag in bag.dags.values():
        for t in dag.tasks:
            callbacks = t.on_execute_callback if isinstance(t.on_execute_callback, list) else [t.on_execute_callback]
            assert export_connections in callbacks, f"{dag.dag_id}.{t.task_id}"
