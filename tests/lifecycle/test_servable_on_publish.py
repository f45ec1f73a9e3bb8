"""A champion is servable the moment it is published: publishing writes an ordinary
calibrate artifact (the router's own scores on its labelled prompts), so every policy name
works through the real gateway with no `tela calibrate` first; `tela calibrate` still
re-targets it, and the running gateway picks that up."""

from __future__ import annotations

import json
import time

import openai
import pytest

from conftest import ROUTER_EASY, ROUTER_HARD
from factories import labels_table
from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text
from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.calibration import calibrate_router, read_calibration
from router_tasks.evaluation.evaluate import evaluate_router
from router_tasks.lifecycle.publish import publish_router, read_champion
from router_tasks.routers import load_router
from router_tasks.routing.thresholds import NEUTRAL_THRESHOLD
from router_tasks.serving.config import GatewayConfig, parse_models_arg
from router_tasks.serving.decisions import latest_calibration
from router_tasks.serving.server import serve_in_thread
from router_tasks.training.train import train_router

# our own pair: only the pro model solves the hard prompts
PRO, MINI = "kestrel-pro", "wren-mini"
KEY_ENV = "KESTREL_UPSTREAM_KEY"
EASY_Q = "What is 5 + 3?"
HARD_Q = "Prove the open mapping theorem for Banach spaces with every step justified."


def _train_and_publish(root: str) -> dict:
    store = ArtifactStore(root)
    df = labels_table(
        ROUTER_EASY + ROUTER_HARD,
        lambda _, t: {PRO: True, MINI: t in ROUTER_EASY},
        source="generated:team",
        benchmark="own",
    )
    labels = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"t": "servable"}, store=store)
    router = train_router(
        labels, router_type="knn", strong_model=PRO, weak_model=MINI, router_params={"k": 5}, artifact_root=root
    )
    evaluation = evaluate_router(router, benchmarks=[], random_seeds=2, artifact_root=root)
    decision = publish_router(router, evaluation, artifact_root=root)
    assert decision["promoted"], decision["reason"]
    return {"root": root, "router": router, "decision": decision, "store": store}


@pytest.fixture(scope="module")
def published(tmp_path_factory, minilm):
    return _train_and_publish(str(tmp_path_factory.mktemp("servable") / "artifacts"))


def test_publishing_writes_a_calibration_the_gateway_finds(published):
    store, router = published["store"], published["router"]
    champion = read_champion(store)
    found = latest_calibration(store, router["key"])
    assert found is not None, "no calibration stored with the new champion"
    key, cal = found
    assert champion["calibration"]["key"] == key == published["decision"]["calibration"]["key"]
    assert key.startswith("stages/calibrate/")  # an ordinary calibrate artifact, as `tela calibrate` writes
    assert cal["n_prompts"] == len(ROUTER_EASY + ROUTER_HARD)
    # the stored scores are the router's own on its labelled prompts
    r = load_router(router, store)
    scores = store.read_parquet(f"{key}/data.parquet")["strong_win_rate"].to_numpy()
    own = sorted(ROUTER_EASY + ROUTER_HARD, key=prompt_id)
    assert scores == pytest.approx(r.strong_win_rate(own), abs=1e-6)
    # the target: as often as the labels found the strong model needed (the hard half)
    assert cal["target_strong_share"] == 0.5 and "found kestrel-pro better than wren-mini" in cal["target_from"]
    assert (scores >= cal["threshold"]).mean() == cal["achieved_strong_share"]
    # publishing the same router again changes nothing and writes no second calibration
    before = store.list("stages/calibrate/")
    again = publish_router(router, champion["evaluation"], artifact_root=published["root"])
    assert not again["promoted"] and store.list("stages/calibrate/") == before


def _upstream(tag):
    return lambda body: Reply(content=f"{tag}: {last_user_text(body)}", prompt_tokens=10, completion_tokens=5)


def _models(pro, mini):
    return [
        {
            "name": PRO,
            "model": "pro-2",
            "base_url": pro.base_url,
            "api_key_env": KEY_ENV,
            "price_input_per_m": 12.0,
            "price_output_per_m": 36.0,
            "max_retries": 0,
        },
        {
            "name": MINI,
            "model": "mini-1",
            "base_url": mini.base_url,
            "api_key_env": KEY_ENV,
            "price_input_per_m": 0.1,
            "price_output_per_m": 0.3,
            "max_retries": 0,
        },
    ]


def test_a_gateway_started_before_the_first_champion_waits_then_serves_it(tmp_path, monkeypatch, minilm):
    """A fresh deployment starts the gateway before any run has published: it answers 503
    (health and chat) and serves the champion, calibrated, as soon as one is published."""
    import httpx

    monkeypatch.setenv(KEY_ENV, "sk-kestrel-upstream")
    root = str(tmp_path / "artifacts")
    with ScriptedOpenAIServer(_upstream("pro")) as pro, ScriptedOpenAIServer(_upstream("mini")) as mini:
        gw = serve_in_thread(
            GatewayConfig(
                parse_models_arg(json.dumps(_models(pro, mini))), artifact_root=root, reload_s=0.3, traffic_flush_s=0.2
            )
        )
        try:
            health = httpx.get(gw.base_url.replace("/v1", "/health"))
            assert health.status_code == 503 and health.json()["router"] is None
            body = {"model": "tela-auto@0.5", "messages": [{"role": "user", "content": HARD_Q}]}
            assert httpx.post(f"{gw.base_url}/chat/completions", json=body).status_code == 503
            assert pro.count() == mini.count() == 0
            fresh = _train_and_publish(root)
            deadline = time.monotonic() + 60
            while gw.gateway.holder.current is None and time.monotonic() < deadline:
                time.sleep(0.1)
            health = httpx.get(gw.base_url.replace("/v1", "/health"))
            assert health.status_code == 200 and health.json()["router"]["key"] == fresh["router"]["key"]
            assert health.json()["router"]["threshold_source"] == fresh["decision"]["calibration"]["key"]
            reply = httpx.post(f"{gw.base_url}/chat/completions", json=body)
            assert reply.status_code == 200 and reply.headers["x-tela-model"] == PRO
        finally:
            gw.stop()


def test_every_policy_works_through_the_gateway_on_the_fresh_champion(published, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-kestrel-upstream")
    with ScriptedOpenAIServer(_upstream("pro")) as pro, ScriptedOpenAIServer(_upstream("mini")) as mini:
        config = GatewayConfig(
            parse_models_arg(json.dumps(_models(pro, mini))),
            artifact_root=published["root"],
            reload_s=0.3,
            traffic_flush_s=0.2,
        )
        gw = serve_in_thread(config)
        try:
            client = openai.OpenAI(base_url=gw.base_url, api_key="sk-caller", max_retries=0)

            def ask(model, text):
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": text}]
                )
                assert raw.http_response.status_code == 200, (model, raw.http_response.text)
                return raw.headers

            loaded = gw.gateway.holder.current
            assert loaded.key == published["router"]["key"]
            assert loaded.threshold_source == published["decision"]["calibration"]["key"]  # not the 0.5 fallback
            for model in ("tela-auto", "tela-auto@0.5", "router-knn-0.5", "tela-cheapest@0.8", "tela-budget@1.0"):
                for text in (EASY_Q, HARD_Q):
                    assert ask(model, text)["x-tela-model"] in (PRO, MINI), model
            # they route: a hard prompt to the pro model, an easy one to the mini model
            for model in ("tela-auto", "tela-auto@0.5"):
                assert ask(model, HARD_Q)["x-tela-model"] == PRO, model
                assert ask(model, EASY_Q)["x-tela-model"] == MINI, model
            assert ask("tela-auto@1.0", EASY_Q)["x-tela-model"] == PRO  # a share needs the stored sample

            # `tela calibrate` still re-targets: the running gateway reloads the newer calibration
            retarget = calibrate_router(
                "champion", ROUTER_EASY + ROUTER_HARD + [EASY_Q], 0.95, artifact_root=published["root"]
            )
            threshold = read_calibration(retarget, artifact_root=published["root"])["threshold"]
            deadline = time.monotonic() + 30
            while gw.gateway.holder.current.threshold_source != retarget["key"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.gateway.holder.current.threshold_source == retarget["key"]
            headers = ask("tela-auto", EASY_Q)
            assert float(headers["x-tela-threshold"]) == pytest.approx(threshold, abs=1e-6)
            assert headers["x-tela-model"] == PRO  # 95% strong: the easy prompt goes to the pro model now
        finally:
            gw.stop()


def test_with_no_share_to_aim_for_the_router_keeps_its_neutral_rule(published):
    """No prompt labelled for both models (nothing says how often the strong one is
    needed): strong exactly where the router predicts it strictly better. (Last: it adds a
    newer calibration of the champion.)"""
    root, router = published["root"], published["router"]
    r = load_router(router, published["store"])
    texts = [EASY_Q, HARD_Q, *ROUTER_EASY[:3]]
    cal = read_calibration(calibrate_router(router, texts, None, artifact_root=root), artifact_root=root)
    scores = r.strong_win_rate(texts)
    assert 0.5 < cal["threshold"] == NEUTRAL_THRESHOLD < 0.5 + 1e-12
    assert cal["target_strong_share"] == cal["achieved_strong_share"] == pytest.approx((scores > 0.5).mean())
    assert "neutral threshold" in cal["target_from"]
