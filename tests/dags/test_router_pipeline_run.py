"""Whole-pipeline runs on Airflow (`dag.test()`), artifacts on moto's S3 server over HTTP,
the real SmolLM2 model behind the local OpenAI-compatible server, real MiniLM embeddings.

One module-scoped first run feeds several assertions; the re-run and the failed-then-fixed
runs each add one more DAG run on the same store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

STAGES = [
    "ingest_prompts",
    "generate_answers",
    "judge_answers",
    "judge_agreement",
    "build_labels",
    "validate_labels",
    "train_router",
    "evaluate_router",
]


def _quick_conf(source: str, **overrides) -> dict:
    conf = {
        "source": source,
        "max_tokens": 12,
        "routellm_max_prompts": 40,
        "eval_max_prompts": 40,
        "min_rows_per_model": 2,  # the tiny file labels the local model twice
        "benchmarks": ["mmlu", "gsm8k", "mt-bench"],
    }
    conf.update(overrides)
    return conf


@pytest.fixture(scope="module")
def pipeline_dag(airflow_db):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py"))
    assert bag.import_errors == {}
    return bag.get_dag("router_pipeline")


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    rows = [
        {"question": "What is 7 + 5?", "answer": "7 + 5 = 12\n#### 12"},
        {"question": "Tom has 3 pens and buys 2 more. How many pens does he have?", "answer": "#### 5"},
        {"prompt": "What is the capital of France?", "reference_answer": "Paris is the capital of France."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def s3_pipeline_root(moto_server):
    import uuid

    import boto3

    bucket = f"tela-dag-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/pipeline"


def _run(dag, conf, root, monkeypatch):
    # default data-quality thresholds: the SmolLM2 judge's verdicts come from its logprobs, none fails to parse
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", root)
    monkeypatch.delenv("TELA_DQ_THRESHOLDS", raising=False)
    dr = dag.test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    refs = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances() if ti.task_id in STAGES}
    return dr, states, refs


@pytest.fixture(scope="module")
def first_run(pipeline_dag, tiny_source, s3_pipeline_root):
    mp = pytest.MonkeyPatch()
    try:
        yield _run(pipeline_dag, _quick_conf(tiny_source), s3_pipeline_root, mp)
    finally:
        mp.undo()


def test_first_run_succeeds_and_stores_everything_on_s3(first_run, s3_pipeline_root):
    from router_tasks.core.stage import read_manifest
    from router_tasks.core.store import ArtifactStore
    from router_tasks.lifecycle.publish import read_champion

    dr, states, refs = first_run
    assert dr.state == "success", states
    assert states.pop("train_router_gpu") == "skipped"  # the default router (ensemble) trains in train_router_cpu
    assert states.pop("evaluate_router_gpu") == "skipped"  # and is scored in evaluate_router_cpu
    # online judge mode: the Batch API path is skipped
    assert states.pop("prepare_judge_batch") == states.pop("judge_batch_run") == "skipped"
    assert all(s == "success" for s in states.values()), states
    store = ArtifactStore(s3_pipeline_root)
    for task_id, ref in refs.items():
        assert ref["uri"].startswith(s3_pipeline_root), task_id
        assert not ref["reused"], task_id
        m = read_manifest(store, ref)
        assert m["rows_out"] is None or m["rows_out"] > 0, task_id

    generated = read_manifest(store, refs["generate_answers"])
    assert generated["rows_out"] == 3  # 3 prompts x 1 local model, none lost
    from router_tasks.core.stage import load_table

    judged = load_table(refs["judge_answers"], store)
    llm = judged[judged["method"] == "llm_judge"]
    assert len(llm) == 1 and llm["score"].notna().all() and llm["failure_reason"].isna().all()
    assert set(llm["verdict_method"]) <= {"logprobs", "continuation"}
    agreement = read_manifest(store, refs["judge_agreement"])["stats"]["agreement"]
    assert agreement["sampled"] == agreement["eligible_rows"] == 2  # both gold-graded answers, judged too
    champion = read_champion(store)
    assert champion["router"]["key"] == refs["train_router"]["key"]
    assert {r["benchmark"] for r in champion["per_benchmark"]} == {"mmlu", "gsm8k", "mt-bench"}
    assert store.exists("runs/latest.md")
    assert any(k.endswith("plot_mmlu.png") for k in store.list(refs["evaluate_router"]["key"]))


def test_rerun_reuses_every_stage_and_calls_no_model(
    first_run, pipeline_dag, tiny_source, s3_pipeline_root, monkeypatch
):
    from router_tasks.core.store import ArtifactStore

    _, _, first_refs = first_run
    store = ArtifactStore(s3_pipeline_root)
    before = set(store.list("stages/"))
    dr, states, refs = _run(pipeline_dag, _quick_conf(tiny_source), s3_pipeline_root, monkeypatch)
    assert dr.state == "success", states
    for task_id in STAGES:
        assert refs[task_id]["reused"], f"{task_id} recomputed"
        assert refs[task_id]["key"] == first_refs[task_id]["key"]
    # Nothing new was written under stages/: no model was called, no router retrained.
    # Only this run's cost ledger is new (a ledger is per run: it says this run spent nothing).
    new = set(store.list("stages/")) - before
    assert new and all(k.startswith("stages/ledger/") for k in new), new
    ledger_key = next(k for k in new if k.endswith("data.parquet"))
    ledger = store.read_parquet(ledger_key)
    assert ledger["calls_now"].sum() == 0 and ledger["dollars_now"].sum() == 0
    summary = store.read_bytes("runs/latest.md").decode()
    # 8 stages reused; references had nothing to do (every prompt has gold or a reference)
    assert summary.count("| reused |") == 8 and "| computed |" not in summary
    assert "Judge verdicts (smollm2-judge): 1 of 1 judged answers have one" in summary
    assert "| references | - | - | nothing to do |" in summary
    assert "Cost ledger" in summary


def test_failed_stage_then_fixed_run_loses_and_duplicates_nothing(
    first_run, pipeline_dag, tiny_source, s3_pipeline_root, monkeypatch
):
    """A run that fails at validation stores nothing for it; the fixed re-run reuses the
    stages before it and completes, with one artifact per stage."""
    from router_tasks.core.store import ArtifactStore

    store = ArtifactStore(s3_pipeline_root)
    conf = _quick_conf(tiny_source, routellm_max_prompts=45)  # new labels -> validate/train/evaluate anew
    dr, states, refs = _run(pipeline_dag, {**conf, "min_rows_per_model": 10_000}, s3_pipeline_root, monkeypatch)
    assert dr.state == "failed"
    assert states["validate_labels"] == "failed"
    assert states["train_router"] in ("upstream_failed", None)
    failed_labels = refs["build_labels"]
    manifests_before = [k for k in store.list("stages/validate/") if k.endswith("_MANIFEST.json")]

    dr, states, refs = _run(pipeline_dag, conf, s3_pipeline_root, monkeypatch)
    assert dr.state == "success", states
    assert refs["ingest_prompts"]["reused"] and refs["generate_answers"]["reused"] and refs["build_labels"]["reused"]
    assert refs["build_labels"]["key"] == failed_labels["key"]
    assert not refs["validate_labels"]["reused"]
    manifests_after = [k for k in store.list("stages/validate/") if k.endswith("_MANIFEST.json")]
    assert len(manifests_after) == len(manifests_before) + 1
