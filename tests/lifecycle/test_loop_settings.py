"""The loop's settings: recorded with labels and champions without secrets, resolved in
layers (champion < labels < Variable < run params), each value saying where it came from."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from router_tasks.core import defaults
from router_tasks.core.params import PIPELINE_PARAMS
from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.lifecycle import loop_settings
from router_tasks.lifecycle.publish import publish_router, read_champion
from router_tasks.lifecycle.retraining import record_labels, retraining_settings
from router_tasks.training.train import train_router

STRONG, WEAK = "osprey-xl", "finch-s"


def _endpoint(name, **extra):
    return {
        "name": name,
        "model": name,
        "base_url": "https://llm.acme.test/v1",
        "api_key_env": "ACME_KEY",
        "conn_id": "acme_llm",
        **extra,
    }


TEAM = {
    "models": [_endpoint(STRONG), _endpoint(WEAK)],
    "judge": _endpoint("owl-judge"),
    "reference_model": None,
    "strong_model": STRONG,
    "weak_model": WEAK,
    "include_routellm": False,
    "router_type": "random",
    "benchmarks": [],
}


def test_recordable_settings_hold_no_secret():
    with pytest.raises(ValueError, match="api_key"):
        loop_settings.recordable({"models": [_endpoint(STRONG, api_key="sk-live-123")]})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['strong'\]"):
        loop_settings.recordable({"strong": STRONG})
    safe = loop_settings.recordable({"judge": _endpoint("owl-judge", base_url="https://u:pw@llm.acme.test/v1?key=s3")})
    assert safe["judge"]["base_url"] == "https://llm.acme.test/v1"
    assert safe["judge"]["api_key_env"] == "ACME_KEY" and safe["judge"]["conn_id"] == "acme_llm"  # names are fine
    assert "source" not in loop_settings.run_settings({**PIPELINE_PARAMS, "source": "/data/p.jsonl"})


def test_layers_win_key_by_key_and_say_where_each_value_came_from():
    resolved = loop_settings.resolve(
        [("champion c1", TEAM), ("Variable tela_loop_settings", {"max_tokens": 64}), ("absent", None)]
    )
    s, src = resolved["settings"], resolved["from"]
    assert set(s) == set(loop_settings.SETTINGS_KEYS)
    assert s["strong_model"] == STRONG and src["strong_model"] == "champion c1"
    assert s["max_tokens"] == 64 and src["max_tokens"] == "Variable tela_loop_settings"
    assert s["judge_mode"] == PIPELINE_PARAMS["judge_mode"] and src["judge_mode"] == "library defaults"
    text = loop_settings.describe(resolved)
    assert "strong_model" in text and "<- champion c1" in text and "judge_mode" not in text


def _labels(root, models, tag):
    texts = [f"{tag} prompt {i}" for i in range(12)]
    # the first model is right on every prompt, the others on every other one
    df = pd.DataFrame(
        [
            dict(
                prompt_id=prompt_id(t),
                prompt=t,
                model=m,
                score=None,
                correct=None,
                quality=1.0 if m == models[0] else float(i % 2),
                source="generated:team",
                benchmark="own",
            )
            for i, t in enumerate(texts)
            for m in models
        ]
    )
    return run_stage(
        "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"tag": tag}, store=ArtifactStore(root)
    )


def test_retraining_trains_for_the_labels_pair_then_the_champions_never_the_demo_default(local_root):
    labels = _labels(local_root, [STRONG, WEAK], "first")
    # labels recorded with the run's settings: the pair comes from them
    extra = record_labels(labels, settings=TEAM, artifact_root=local_root)
    got = retraining_settings(labels, [extra], artifact_root=local_root)
    assert (got["settings"]["strong_model"], got["settings"]["weak_model"]) == (STRONG, WEAK)
    assert got["from"]["strong_model"] == f"labels {labels['key']} (Asset event)"
    # the same from labels/LATEST.json (a cron run: no event)
    assert retraining_settings(labels, [], artifact_root=local_root)["from"]["judge"].endswith("(labels/LATEST.json)")

    # a champion that records its settings; newer labels that record none (e.g. from a file)
    router = train_router(labels, router_type="random", strong_model=STRONG, weak_model=WEAK, artifact_root=local_root)
    evaluation = evaluate_router(router, benchmarks=[], random_seeds=1, artifact_root=local_root)
    assert publish_router(router, evaluation, settings=TEAM, artifact_root=local_root)["promoted"]
    champion = read_champion(ArtifactStore(local_root))
    assert champion["settings"]["judge"]["conn_id"] == "acme_llm"
    assert champion["settings_from"]["strong_model"] == "the publishing run's params"
    newer = _labels(local_root, [STRONG, WEAK, "gpt-4-1106-preview"], "newer")
    got = retraining_settings(newer, [{"labels": newer}], artifact_root=local_root)
    assert got["settings"]["strong_model"] == STRONG and got["from"]["strong_model"].startswith("champion ")
    # the team's Variable and then the run's own params win
    got = retraining_settings(
        newer,
        [],
        variable={"strong_model": "gpt-4-1106-preview"},
        params={"weak_model": None, "benchmarks": ["mt-bench"]},
        artifact_root=local_root,
    )
    assert got["settings"]["strong_model"] == "gpt-4-1106-preview"
    assert got["from"]["strong_model"] == "Variable tela_loop_settings"
    assert got["settings"]["weak_model"] == WEAK  # a None param is "not given"
    assert got["settings"]["benchmarks"] == ["mt-bench"] and got["from"]["benchmarks"] == "this run's params"


def test_a_pair_without_labels_fails_naming_where_it_came_from(local_root):
    labels = _labels(local_root, ["frontier-xl", "open-8b"], "other")
    with pytest.raises(ValueError) as err:
        retraining_settings(labels, [], artifact_root=local_root)  # no champion, no recorded settings
    text = str(err.value)
    assert f"strong_model {defaults.STRONG_MODEL!r} (from library defaults)" in text
    assert "['frontier-xl', 'open-8b']" in text and loop_settings.VARIABLE in text


def test_relabel_conf_is_the_champions_settings_under_the_variable_and_the_runs_conf(local_root):
    store = ArtifactStore(local_root)
    plan = loop_settings.relabel_conf("s3://b/traffic-exports/x.jsonl", artifact_root=local_root)
    assert plan["conf"]["models"] == defaults.DEMO_MODELS and plan["from"]["models"] == "library defaults"
    store.write_json("champion/CHAMPION.json", {"router": {"key": "stages/train/abc"}, "settings": TEAM})
    plan = loop_settings.relabel_conf(
        "s3://b/traffic-exports/x.jsonl",
        variable={"judge": _endpoint("hawk-judge")},
        conf={"sample": 50, "source": "ignored"},
        artifact_root=local_root,
    )
    conf = plan["conf"]
    assert conf["source"] == "s3://b/traffic-exports/x.jsonl" and conf["sample"] == 50
    assert conf["models"] == TEAM["models"] and plan["from"]["models"] == "champion stages/train/abc"
    assert conf["judge"]["name"] == "hawk-judge" and plan["from"]["judge"] == "Variable tela_loop_settings"
    assert (conf["strong_model"], conf["weak_model"]) == (STRONG, WEAK)
    json.dumps(plan)  # a conf Airflow can carry
