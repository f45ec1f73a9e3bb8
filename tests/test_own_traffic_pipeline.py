"""`tela pipeline` on a team's own traffic: its prompts, four endpoints of its own naming
(one strong, three open), its judge, no bundled labels. It must end with a champion whose
held-out own-labels APGR clearly beats random, and a re-run must send no request.

With 100 prompts the labels are few, so the own-labels benchmark is cross-fit by prompt
(the DAG test, with more prompts, covers the fixed holdout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_test_server import ScriptedOpenAIServer
from own_traffic_world import DOMAINS, STRONG, WEAK, endpoints, make_prompts, rule, write_prompts_file

pytestmark = pytest.mark.slow
TELA = str(Path(sys.executable).parent / "tela")
KEY_ENV = "OWN_TRAFFIC_KEY"


def _tela(args, root, env):
    out = subprocess.run([TELA, "--artifact-root", root, *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def test_tela_pipeline_on_own_endpoints_ends_with_a_champion(tmp_path):
    from router_tasks.core.stage import load_table
    from router_tasks.core.store import ArtifactStore
    from router_tasks.lifecycle.publish import read_champion

    source = write_prompts_file(tmp_path / "traffic.jsonl", make_prompts(100, seed=11))
    root = str(tmp_path / "artifacts")
    env = {**os.environ, KEY_ENV: "sk-test-not-a-secret"}
    with ScriptedOpenAIServer(rule) as srv:
        models, judge, reference = endpoints(srv.base_url, KEY_ENV)
        models_file = tmp_path / "models.json"
        models_file.write_text(json.dumps(models))
        args = [
            "pipeline",
            "--source",
            source,
            "--models",
            str(models_file),
            "--judge",
            json.dumps(judge),
            "--reference",
            json.dumps(reference),
            "--strong-model",
            STRONG,
            "--weak-model",
            WEAK,
            "--router-type",
            "knn",
            "--no-routellm",
            "--json",
        ]
        first = json.loads(_tela(args, root, env).stdout)
        asked = srv.count()
        assert asked >= 100 * 4 * 2  # every prompt answered by 4 models and judged
        second = json.loads(_tela(args, root, env).stdout)
        assert srv.count() == asked, "a re-run asked the endpoints again"

    assert first["decision"]["promoted"], first["decision"]["reason"]
    assert all(second["stages"][s]["reused"] for s in ("ingest", "generate", "judge", "labels", "train", "evaluate"))
    store = ArtifactStore(root)
    champion = read_champion(store)
    assert champion["router"]["key"] == first["stages"]["train"]["key"]
    row = load_table(first["stages"]["evaluate"], store).set_index("benchmark").loc["own-labels"]
    assert row["protocol"] == "crossfit"
    assert row["n_prompts"] >= 90  # every prompt labelled for both models is scored once
    print(
        f"own-labels {row['protocol']}: n={row['n_prompts']} APGR {row['apgr']:.3f} "
        f"random {row['random_apgr']:.3f} oracle {row['oracle_apgr']:.3f}"
    )
    assert row["apgr"] > row["random_apgr"] + 0.15, (row["apgr"], row["random_apgr"])
    metrics = store.read_json(f"{first['stages']['evaluate']['key']}/metrics.json")
    assert set(metrics["skipped"]) == {"mmlu", "gsm8k", "mt-bench"}  # they know neither of our models
    assert all("frontier-xl" in why for why in metrics["skipped"].values())
    report = store.read_bytes(f"{first['stages']['evaluate']['key']}/report.md").decode()
    assert "skipped mmlu" in report and "Brier" in report and "plot_cost_own-labels.png" in report
    # the prompt file's categories (the world's domains) reach the labels, and each domain is
    # also scored by a router that never saw it
    left_out = metrics["own_left_out"]
    assert left_out["group_by"] == "category", left_out
    assert set(left_out["per_group"]) <= set(DOMAINS) and len(left_out["per_group"]) >= 2
    assert sum(v["n_prompts"] for v in left_out["per_group"].values()) >= 90 - 10 * len(left_out["left_in"])
    print(
        f"own-labels, each domain left out: APGR {left_out['routellm']['apgr']:.3f} "
        f"(per domain { ({g: v['apgr'] for g, v in left_out['per_group'].items()}) })"
    )
    assert "each category left out" in report
