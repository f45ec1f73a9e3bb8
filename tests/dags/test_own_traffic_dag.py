"""The router_pipeline DAG (`dag.test()` with a run conf) on a team's own traffic: 170 of
its prompts, four endpoints of its own naming on a local OpenAI-compatible server, its
judge, no bundled labels, artifacts on moto's S3 server. The run must end with a champion
whose held-out own-labels APGR clearly beats random; a re-run sends no request."""

from __future__ import annotations

from pathlib import Path

import pytest

from openai_test_server import ScriptedOpenAIServer
from own_traffic_world import OPEN_MODELS, STRONG, WEAK, endpoints, make_prompts, rule, write_prompts_file

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
KEY_ENV = "OWN_TRAFFIC_KEY"


def test_dag_on_own_endpoints_ends_with_a_champion(airflow_db, s3_root, tmp_path, monkeypatch):
    from airflow.models import DagBag

    from router_tasks.core.stage import load_table
    from router_tasks.core.store import ArtifactStore
    from router_tasks.lifecycle.publish import read_champion

    dag = DagBag(dag_folder=str(REPO / "dags" / "router_pipeline.py")).get_dag("router_pipeline")
    source = write_prompts_file(tmp_path / "traffic.jsonl", make_prompts(170, seed=3))
    monkeypatch.setenv("TELA_ARTIFACT_ROOT", s3_root)
    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-secret")
    with ScriptedOpenAIServer(rule) as srv:
        models, judge, reference = endpoints(srv.base_url, KEY_ENV)
        conf = {
            "source": source,
            "models": models,
            "judge": judge,
            "reference_model": reference,
            "strong_model": STRONG,
            "weak_model": WEAK,
            "include_routellm": False,
            "router_type": "knn",
            "max_tokens": 32,
        }
        dr = dag.test(run_conf=conf)
        states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert dr.state == "success", states
        refs = {
            ti.task_id: ti.xcom_pull(task_ids=ti.task_id)
            for ti in dr.get_task_instances()
            if ti.task_id in ("train_router", "evaluate_router", "publish_router")
        }
        asked = srv.count()
        assert asked >= 170 * 4 * 2
        again = dag.test(run_conf=conf)
        assert again.state == "success"
        assert srv.count() == asked, "a re-run asked the endpoints again"

    store = ArtifactStore(s3_root)
    decision = refs["publish_router"]
    assert decision["promoted"], decision["reason"]
    assert read_champion(store)["router"]["key"] == refs["train_router"]["key"]
    table = load_table(refs["evaluate_router"], store).set_index("benchmark")
    assert list(table.index) == ["own-labels"]  # the RouteLLM benchmarks know neither model: skipped
    row = table.loc["own-labels"]
    assert row["protocol"] == "holdout"
    assert 15 <= row["n_prompts"] <= 60  # the ~20% fixed hash holdout of 170 prompts
    print(
        f"own-labels {row['protocol']}: n={row['n_prompts']} APGR {row['apgr']:.3f} "
        f"random {row['random_apgr']:.3f} oracle {row['oracle_apgr']:.3f}"
    )
    assert row["apgr"] > row["random_apgr"] + 0.15, (row["apgr"], row["random_apgr"])
    metrics = store.read_json(f"{refs['evaluate_router']['key']}/metrics.json")
    own = metrics["benchmarks"]["own-labels"]
    assert {c["model"] for c in own["calibration"]} == {STRONG, *OPEN_MODELS}
    assert all(0 <= c["brier"] <= 1 for c in own["calibration"])
    assert {c["label"] for c in own["cost_curve"] if c["method"] == "model"} == {STRONG, *OPEN_MODELS}
    assert metrics["strong_quality"] == "labeled"
    # the router never trained on a held-out prompt (the leakage check ran; the counts agree)
    router_meta = store.read_json(f"{refs['train_router']['key']}/router.json")
    assert router_meta["training_data"]["own_eval"]["protocol"] == "holdout"
    assert router_meta["training_data"]["n_prompts"] == 170 - router_meta["training_data"]["own_eval"]["n_heldout"]

    # the champion keeps the run's settings (key names, never the key) for the loop's scheduled runs
    champion = read_champion(store)
    assert champion["settings"]["models"] == models and champion["settings"]["judge"] == judge
    assert (champion["settings"]["strong_model"], champion["settings"]["weak_model"]) == (STRONG, WEAK)
    for key in ("champion/CHAMPION.json", "labels/LATEST.json"):
        assert "sk-test-not-a-secret" not in store.read_bytes(key).decode(), key
    _retraining_with_default_params_trains_for_the_teams_models(store)


def _retraining_with_default_params_trains_for_the_teams_models(store):
    """router_retraining as its Asset-triggered or weekly run starts it: no conf, so only the
    DAG's defaults, which name the bundled demo pair. It must train for the team's models
    (recorded with the labels the pipeline run announced), not fail on the demo pair."""
    from airflow.models import DagBag

    from router_tasks.lifecycle.retraining import LATEST_LABELS_KEY

    assert store.read_json(LATEST_LABELS_KEY)["settings"]["strong_model"] == STRONG
    dag = DagBag(dag_folder=str(REPO / "dags" / "router_retraining.py")).get_dag("router_retraining")
    assert dag.params["strong_model"] is None  # the defaults say "from the loop's settings"
    dr = dag.test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
    assert dr.state == "success", states
    loop = dr.get_task_instance("loop_settings").xcom_pull(task_ids="loop_settings")
    assert loop["from"]["strong_model"].endswith(f"({LATEST_LABELS_KEY})"), loop["from"]
    routers = dr.get_task_instance("trained_routers").xcom_pull(task_ids="trained_routers")
    for ref in routers:
        meta = store.read_json(f"{ref['key']}/router.json")
        assert (meta["strong_model"], meta["weak_model"]) == (STRONG, WEAK)
    decision = store.read_json(sorted(store.list("champion/decisions/"))[-1])
    assert decision["settings"]["strong_model"] == STRONG
    assert decision["settings"]["router_type"] in ("knn", "ensemble")  # the winner's, recorded for the next run
