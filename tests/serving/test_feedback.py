"""User feedback end to end: clients rate the answers they were served
(`POST /v1/feedback` with their key), the gateway stores the ratings beside the traffic
log and counts them, and the pipeline run on that traffic window gets them as labels for
the model that answered, next to its judge's labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from gateway_world import EASY_Q, HARD_Q, KEY_ENV, LARGE, SMALL, UP_KEY, gateway_config, train_champion
from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text
from router_tasks.core.schemas import is_own_source
from router_tasks.core.stage import load_table
from router_tasks.core.store import ArtifactStore
from router_tasks.pipeline import STEPS, labels_with_feedback, resolve_params
from router_tasks.serving import keys as client_keys
from router_tasks.serving.feedback import feedback_labels
from router_tasks.serving.server import serve_in_thread

JUDGE = "grader-2"


def _rule(tag):
    def rule(body):
        if body.get("model") == JUDGE:
            return Reply(content="Sound enough. [[4]]")
        return Reply(content=f"{tag} answers {last_user_text(body)}", prompt_tokens=10, completion_tokens=5)

    return rule


def _post(gw, key, body, raw=None):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    url = f"{gw.base_url}/feedback"
    if raw is not None:
        return httpx.post(url, content=raw, headers={**headers, "content-type": "application/json"})
    return httpx.post(url, json=body, headers=headers)


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm):
    """A window of traffic with ratings: alice rates her two answers (one of them twice),
    bob rates his own answer and tries to rate one of alice's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, UP_KEY)
        yield from _serve(tmp_path_factory.mktemp("feedback"))


def _serve(tmp_path):
    root = str(tmp_path / "artifacts")
    train_champion(root)
    path = str(tmp_path / "KEYS")
    alice, bob = client_keys.create_key(path, "alice"), client_keys.create_key(path, "bob")
    start = datetime.now(UTC) - timedelta(seconds=1)
    with (
        ScriptedOpenAIServer(_rule("large"), api_key=UP_KEY) as large,
        ScriptedOpenAIServer(_rule("small"), api_key=UP_KEY) as small,
    ):
        gw = serve_in_thread(gateway_config(root, large.base_url, small.base_url, keys_file=path))
        try:
            ask = lambda key, text: openai.OpenAI(
                base_url=gw.base_url, api_key=key, max_retries=0
            ).chat.completions.create(model="tela-auto", messages=[{"role": "user", "content": text}])  # noqa: E731
            easy, hard, bobs = ask(alice, EASY_Q), ask(alice, HARD_Q), ask(bob, "Name a yellow fruit.")
            checks = {
                "alice-easy": _post(gw, alice, {"id": easy.id, "score": 5, "comment": "spot on"}),
                "alice-hard": _post(gw, alice, {"id": hard.id, "score": 1}),
                "alice-hard-again": _post(gw, alice, {"id": hard.id, "score": 2}),
                "bob-own": _post(gw, bob, {"id": bobs.id, "score": 4}),
                "bob-on-alice": _post(gw, bob, {"id": easy.id, "score": 1}),
            }
            bad = {
                "no key": _post(gw, None, {"id": easy.id, "score": 5}),
                "no id": _post(gw, alice, {"score": 5}),
                "score 6": _post(gw, alice, {"id": easy.id, "score": 6}),
                "score text": _post(gw, alice, {"id": easy.id, "score": "5"}),
                "comment": _post(gw, alice, {"id": easy.id, "score": 5, "comment": 3}),
                "extra": _post(gw, alice, {"id": easy.id, "score": 5, "rating": 3}),
                "not json": _post(gw, alice, None, raw=b"{id: 1"),
                "list": _post(gw, alice, [1, 2]),
            }
            metrics = httpx.get(gw.base_url.removesuffix("/v1") + "/metrics").text
        finally:
            gw.stop()
        yield {
            "root": root,
            "start": start,
            "end": datetime.now(UTC) + timedelta(seconds=1),
            "easy": easy,
            "hard": hard,
            "checks": checks,
            "bad": bad,
            "metrics": metrics,
            "large": large,
            "small": small,
        }


def test_feedback_is_validated_stored_and_counted(served):
    for name, r in served["checks"].items():
        assert r.status_code == 200, (name, r.text)
        assert r.json()["recorded"] is True
    bad = {name: (r.status_code, r.json()["error"]) for name, r in served["bad"].items()}
    assert bad["no key"][0] == 401
    assert bad["no id"][0] == 400 and bad["no id"][1]["param"] == "id"
    assert bad["score 6"][1]["param"] == "score" and "1 (bad) to 5" in bad["score 6"][1]["message"]
    assert bad["score text"][1]["param"] == "score"
    assert bad["comment"][1]["param"] == "comment"
    assert bad["extra"][1]["param"] == "rating" and "unknown field" in bad["extra"][1]["message"]
    assert bad["not json"][0] == 400 and "not valid JSON" in bad["not json"][1]["message"]
    assert bad["list"][0] == 400 and "JSON object" in bad["list"][1]["message"]
    assert 'tela_feedback_total{key="alice",score="5"} 1' in served["metrics"]
    assert 'tela_feedback_total{key="bob",score="1"} 1' in served["metrics"]


def test_a_windows_feedback_becomes_labels_for_the_model_that_answered(served):
    store = ArtifactStore(served["root"])
    labels, counts = feedback_labels(store, served["start"], served["end"])
    assert counts["ratings"] == 4 and counts["matched"] == 3 and counts["unmatched"] == 1  # bob on alice's
    got = {(r.prompt, r.model, r.source): (r.score, r.quality) for r in labels.itertuples()}
    assert got == {
        (EASY_Q, SMALL, "feedback:alice"): (5, 1.0),
        (HARD_Q, LARGE, "feedback:alice"): (2, 0.25),
        ("Name a yellow fruit.", SMALL, "feedback:bob"): (4, 0.75),
    }
    assert is_own_source(labels["source"]).all()


def test_the_pipeline_on_a_traffic_window_labels_with_feedback_beside_the_judge(served):
    root, url = served["root"], served["large"].base_url
    window = f"traffic://{served['start'].isoformat()}/{served['end'].isoformat()}"
    endpoint = lambda name, model: {
        "name": name,
        "model": model,
        "base_url": url,  # noqa: E731
        "api_key_env": KEY_ENV,
        "max_retries": 0,
    }
    params = resolve_params(
        dict(
            source=window,
            models=[endpoint(LARGE, "large-v1"), endpoint(SMALL, "small-v1")],
            judge=endpoint(JUDGE, JUDGE),
            reference_model=endpoint("ref", "large-v1"),
            include_routellm=False,
            strong_model=LARGE,
            weak_model=SMALL,
        )
    )
    refs: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, UP_KEY)
        for step in STEPS:  # as run_pipeline runs them, up to the labels
            if not step.runs(params):
                refs[step.name] = None
                continue
            args = [{i: refs[i] for i in step.inputs}] if step.inputs_as_mapping else [refs[i] for i in step.inputs]
            refs[step.name] = step.fn(*args, **step.kwargs(params), artifact_root=root)
            if step.name == "labels":
                break
    again = labels_with_feedback(
        refs["references"], refs["judge"], refs["agreement"], source=window, include_routellm=False, artifact_root=root
    )
    assert again["key"] == refs["labels"]["key"] and again["reused"]  # same ratings: the same labels artifact
    table = load_table(refs["labels"], ArtifactStore(root))
    easy = table[table["prompt"] == EASY_Q].set_index(["model", "source"])
    judged = easy.xs(SMALL, level="model")
    assert judged.loc["feedback:alice", "score"] == 5
    assert any(s.startswith("generated:") for s in judged.index)  # the judge's label of the same answer
    assert table.loc[table["source"].str.startswith("feedback:"), "model"].tolist().count(SMALL) == 2
