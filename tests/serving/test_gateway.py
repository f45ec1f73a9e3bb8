"""The routing gateway over real HTTP: the real `openai` client (sync, async, streaming)
and raw httpx against local scripted upstreams with latency and fault switches."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC

import httpx
import openai
import pytest

from conftest import ROUTER_EASY, ROUTER_HARD
from factories import labels_table
from openai_test_server import Faults, Reply, ScriptedOpenAIServer, last_user_text
from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.calibration import calibrate_router
from router_tasks.routers import load_router
from router_tasks.serving.config import GatewayConfig, parse_models_arg
from router_tasks.serving.server import serve_in_thread
from router_tasks.serving.traffic import read_window
from router_tasks.training.train import train_router

# Our own world: two models of a made-up vendor; only the large one solves the hard prompts.
LARGE, SMALL = "acme-large", "acme-small"
UP_KEY = "sk-upstream-secret-123"  # the upstreams' key: must never reach a log or the traffic log
CLIENT_KEY = "sk-client-secret-456"  # what callers send the gateway: never forwarded or stored
EASY_Q = "What is 6 + 1?"
HARD_Q = "Prove the Hahn-Banach extension theorem for normed spaces in full rigour."


def _labels(strong: str, weak: str):
    return labels_table(
        ROUTER_EASY + ROUTER_HARD, lambda _, text: {strong: True, weak: text not in ROUTER_HARD}, source="test:gateway"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm):
    """A trained kNN router published as champion and calibrated to a 50% strong share."""
    root = str(tmp_path_factory.mktemp("gateway") / "artifacts")
    df = _labels(LARGE, SMALL)
    labels = run_stage(
        "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"w": "gw"}, store=ArtifactStore(root)
    )
    ref = train_router(
        labels, router_type="knn", strong_model=LARGE, weak_model=SMALL, router_params={"k": 5}, artifact_root=root
    )
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref})
    calibrate_router("champion", ROUTER_EASY + ROUTER_HARD, 0.5, artifact_root=root)
    return {"root": root, "router": ref}


def _echo(tag):
    return lambda body: Reply(content=f"{tag}: {last_user_text(body)}", prompt_tokens=10, completion_tokens=5)


@pytest.fixture
def upstreams(monkeypatch):
    monkeypatch.setenv("ACME_KEY", UP_KEY)
    with (
        ScriptedOpenAIServer(_echo("large"), api_key=UP_KEY) as large,
        ScriptedOpenAIServer(_echo("small"), api_key=UP_KEY) as small,
    ):
        yield {"large": large, "small": small}


def _models(upstreams, **over):
    return [
        {
            "name": LARGE,
            "model": "large-v3",
            "base_url": upstreams["large"].base_url,
            "api_key_env": "ACME_KEY",
            "price_input_per_m": 10.0,
            "price_output_per_m": 30.0,
            "max_retries": 0,
            "timeout_s": over.get("timeout", 5),
        },
        {
            "name": SMALL,
            "model": "small-v1",
            "base_url": upstreams["small"].base_url,
            "api_key_env": "ACME_KEY",
            "price_input_per_m": 0.2,
            "price_output_per_m": 0.6,
            "max_retries": 0,
            "timeout_s": over.get("timeout", 5),
        },
    ]


@pytest.fixture
def gateway(world, upstreams):
    running = []

    def start(models=None, **cfg):
        config = GatewayConfig(
            parse_models_arg(json.dumps(models or _models(upstreams))),
            artifact_root=world["root"],
            traffic_flush_s=0.2,
            **cfg,
        )
        gw = serve_in_thread(config)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()


def _client(gw, cls=openai.OpenAI):
    return cls(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)


def test_routes_each_prompt_to_the_model_the_router_picks(gateway, world, upstreams):
    gw = gateway()
    router = load_router(world["router"], ArtifactStore(world["root"]))
    easy_s, hard_s = router.strong_win_rate([EASY_Q, HARD_Q])
    threshold = gw.gateway.holder.current.threshold
    assert easy_s < threshold <= hard_s  # the calibration splits them, else the test proves nothing

    client = _client(gw)
    for text, expect, score in ((EASY_Q, SMALL, easy_s), (HARD_Q, LARGE, hard_s)):
        raw = client.chat.completions.with_raw_response.create(
            model="tela-auto", messages=[{"role": "user", "content": text}]
        )
        resp = raw.parse()
        assert raw.headers["x-tela-model"] == expect
        assert raw.headers["x-tela-router"] == world["router"]["key"]
        assert float(raw.headers["x-tela-score"]) == pytest.approx(score, abs=1e-5)
        assert float(raw.headers["x-tela-threshold"]) == pytest.approx(threshold, abs=1e-5)
        assert raw.headers["x-tela-fallback"] == "false" and float(raw.headers["x-tela-decision-ms"]) > 0
        assert resp.choices[0].message.content == f"{'large' if expect == LARGE else 'small'}: {text}"
        assert resp.model_extra["tela_routing"]["model"] == expect
    assert upstreams["large"].user_texts() == [HARD_Q] and upstreams["small"].user_texts() == [EASY_Q]
    # the upstream saw its own model id and key, never the caller's key
    assert upstreams["large"].requests[0]["model"] == "large-v3"
    assert set(upstreams["large"].auth_headers) == {f"Bearer {UP_KEY}"}

    # RouteLLM's name form and an explicit share pick the same way from the same scores
    r = client.chat.completions.with_raw_response.create(
        model=f"router-knn-{(easy_s + hard_s) / 2:.4f}", messages=[{"role": "user", "content": EASY_Q}]
    )
    assert r.headers["x-tela-model"] == SMALL
    r = client.chat.completions.with_raw_response.create(
        model="tela-auto@1.0", messages=[{"role": "user", "content": EASY_Q}]
    )
    assert r.headers["x-tela-model"] == LARGE  # 100% strong: every prompt goes to the strong model
    # any other name goes straight to that upstream, unrouted
    r = client.chat.completions.with_raw_response.create(model=SMALL, messages=[{"role": "user", "content": HARD_Q}])
    assert r.headers["x-tela-model"] == SMALL and r.headers["x-tela-score"] == ""


def test_many_model_policies(gateway):
    gw = gateway()
    client = _client(gw)
    msgs = [{"role": "user", "content": HARD_Q}]
    # the large model is the only one predicted adequate at 0.9 on a hard prompt
    assert (
        client.chat.completions.with_raw_response.create(model="tela-cheapest@0.9", messages=msgs).headers[
            "x-tela-model"
        ]
        == LARGE
    )
    assert (
        client.chat.completions.with_raw_response.create(model="tela-cheapest@0.0", messages=msgs).headers[
            "x-tela-model"
        ]
        == SMALL
    )
    # $0.01 per 1k requests affords neither: the cheapest model
    assert (
        client.chat.completions.with_raw_response.create(model="tela-budget@0.01", messages=msgs).headers[
            "x-tela-model"
        ]
        == SMALL
    )


def test_tools_and_other_fields_pass_through_and_async_client(gateway, upstreams):
    gw = gateway()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]

    async def go():
        async with _client(gw, openai.AsyncOpenAI) as client:
            return await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model="tela-auto",
                        messages=[{"role": "user", "content": q}],
                        tools=tools,
                        temperature=0.3,
                        seed=7,
                        extra_body={"top_k": 4},
                    )
                    for q in [EASY_Q, HARD_Q] * 4
                ]
            )

    replies = asyncio.run(go())
    assert len(replies) == 8
    sent = upstreams["large"].requests + upstreams["small"].requests
    assert len(sent) == 8
    for body in sent:
        assert body["tools"] == tools and body["temperature"] == 0.3 and body["seed"] == 7 and body["top_k"] == 4
    # concurrent requests shared batched scoring calls
    assert gw.gateway.batcher.batches < 8


def test_streaming_through_the_openai_client_and_raw_http(gateway):
    gw = gateway()
    client = _client(gw)
    stream = client.chat.completions.create(
        model="tela-auto",
        messages=[{"role": "user", "content": HARD_Q}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"large: {HARD_Q}"
    assert chunks[0].model_extra["tela_routing"]["model"] == LARGE
    assert chunks[-1].usage.completion_tokens == 5

    with httpx.stream(
        "POST",
        f"{gw.base_url}/chat/completions",
        json={"model": "tela-auto", "stream": True, "messages": [{"role": "user", "content": EASY_Q}]},
    ) as r:
        assert r.headers["x-tela-model"] == SMALL and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][5:])["tela_routing"]["model"] == SMALL


def test_fallback_on_5xx_and_timeouts_then_cooldown(gateway, upstreams):
    gw = gateway(models=_models(upstreams, timeout=0.5), cooldown_fails=2, cooldown_s=60)
    client = _client(gw)
    msgs = [{"role": "user", "content": HARD_Q}]
    upstreams["large"].faults = Faults(rate_500=1.0)
    r = client.chat.completions.with_raw_response.create(model="tela-auto", messages=msgs)
    assert r.headers["x-tela-model"] == SMALL and r.headers["x-tela-fallback"] == "true"
    assert r.parse().model_extra["tela_routing"]["fallback_from"] == [LARGE]

    upstreams["large"].faults = Faults(rate_timeout=1.0, timeout_sleep_s=3)
    r = client.chat.completions.with_raw_response.create(model="tela-auto", messages=msgs)
    assert r.headers["x-tela-model"] == SMALL and r.headers["x-tela-fallback"] == "true"
    # two failures in a row: the large model cools down and is not even tried
    tried = upstreams["large"].count()
    upstreams["large"].faults = Faults()
    r = client.chat.completions.with_raw_response.create(model="tela-auto", messages=msgs)
    assert r.headers["x-tela-model"] == SMALL and upstreams["large"].count() == tried
    health = httpx.get(gw.base_url.replace("/v1", "/health")).json()
    assert health["upstreams"][LARGE]["cooldown_s_left"] > 50
    metrics = httpx.get(gw.base_url.replace("/v1", "/metrics")).text
    assert f'tela_upstream_cooldown{{model="{LARGE}"}} 1' in metrics
    assert 'tela_fallbacks_total{from="acme-large",to="acme-small"}' in metrics

    # both down: an OpenAI-style 502 naming each failure
    upstreams["small"].faults = Faults(rate_500=1.0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="tela-auto", messages=[{"role": "user", "content": EASY_Q}])
    assert err.value.status_code == 502 and "acme-small: HTTP 500" in err.value.message


def test_malformed_requests_get_openai_style_400(gateway):
    gw = gateway()
    url = f"{gw.base_url}/chat/completions"
    cases = [
        (b"{not json", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": "tela-auto", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "tela-auto", "messages": [{"content": "x"}]}).encode(), "messages[0]"),
        (json.dumps({"model": "tela-auto@1.7", "messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": "router-mf-0.3", "messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
    ]
    for raw, param in cases:
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param
    r = httpx.post(url, json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        _client(gw).chat.completions.create(model="tela-auto", messages=[{"role": "system", "content": "no user"}])
    models = _client(gw).models.list()
    assert {"tela-auto", LARGE, SMALL} <= {m.id for m in models.data}


def test_traffic_log_rows_and_no_secret_anywhere(gateway, world, upstreams, caplog):
    caplog.set_level(logging.DEBUG)
    gw = gateway()
    client = _client(gw)
    client.chat.completions.create(model="tela-auto", messages=[{"role": "user", "content": EASY_Q}])
    client.chat.completions.create(model="tela-auto", messages=[{"role": "user", "content": HARD_Q}])
    gw.stop()  # flushes the log
    from datetime import datetime, timedelta

    now = datetime.now(UTC)
    df = read_window(ArtifactStore(world["root"]), now - timedelta(minutes=5), now + timedelta(minutes=1))
    df = df[df["prompt"].isin([EASY_Q, HARD_Q])].tail(2)
    assert df["model"].tolist() == [SMALL, LARGE]
    assert df["prompt_id"].tolist() == [prompt_id(EASY_Q), prompt_id(HARD_Q)]
    assert (df["router_key"] == world["router"]["key"]).all() and df["score"].between(0, 1).all()
    assert df["input_tokens"].tolist() == [10, 10] and df["output_tokens"].tolist() == [5, 5]
    assert df["cost_usd"].iloc[1] == pytest.approx((10 * 10.0 + 5 * 30.0) / 1e6)
    store = ArtifactStore(world["root"])
    blob = b"".join(store.read_bytes(k) for k in store.list("traffic/"))
    for secret in (UP_KEY, CLIENT_KEY):
        assert secret.encode() not in blob
        assert secret not in caplog.text


def test_prompt_text_off(gateway, world, tmp_path):
    gw = gateway(keep_prompts=False)
    _client(gw).chat.completions.create(
        model="tela-auto", messages=[{"role": "user", "content": "Tell me a joke, please"}]
    )
    gw.stop()
    store = ArtifactStore(world["root"])
    blob = b"".join(store.read_bytes(k) for k in store.list("traffic/"))
    assert prompt_id("Tell me a joke, please").encode() in blob  # the id is kept...
    assert b"Tell me a joke" not in blob  # ...the text is not


def test_hot_reload_keeps_in_flight_requests(gateway, world, upstreams, tmp_path):
    root = world["root"]
    gw = gateway(reload_s=0.2)
    first_key = gw.gateway.holder.current.key
    # a second champion: same labels, other params -> another artifact key
    from router_tasks.core.stage import resolve_ref

    labels = ArtifactStore(root).read_json(f"{first_key}/router.json")["training_data"]["labels_key"]
    ref2 = train_router(
        resolve_ref(labels, ArtifactStore(root)),
        router_type="knn",
        strong_model=LARGE,
        weak_model=SMALL,
        router_params={"k": 3},
        artifact_root=root,
    )
    upstreams["large"].rule = lambda body: Reply(content="slow", delay_s=1.0)

    async def go():
        async with _client(gw, openai.AsyncOpenAI) as client:
            slow = asyncio.ensure_future(
                client.chat.completions.with_raw_response.create(
                    model="tela-auto", messages=[{"role": "user", "content": HARD_Q}]
                )
            )
            for _ in range(500):  # until the slow request is at the (old champion's) strong upstream
                if upstreams["large"].in_flight:
                    break
                await asyncio.sleep(0.01)
            ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref2})
            for _ in range(50):
                await asyncio.sleep(0.1)
                if gw.gateway.holder.current.key == ref2["key"]:
                    break
            after = await client.chat.completions.with_raw_response.create(
                model="tela-auto", messages=[{"role": "user", "content": EASY_Q}]
            )
            return await slow, after

    try:
        slow, after = asyncio.run(go())
    finally:
        ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": world["router"]})
    assert slow.status_code == 200 and slow.headers["x-tela-router"] == first_key
    assert after.headers["x-tela-router"] == ref2["key"]
    assert gw.gateway.holder.reloads == 1


def test_retries_honour_retry_after_before_falling_back(gateway, upstreams):
    models = _models(upstreams)
    for m in models:
        m["max_retries"] = 2
    gw = gateway(models=models)
    # the first attempt of every body gets a 429 with retry-after-ms: the same upstream answers on retry
    upstreams["large"].faults = Faults(fail_first=1, fail_first_with=429, retry_after_ms=20)
    r = _client(gw).chat.completions.with_raw_response.create(
        model="tela-auto", messages=[{"role": "user", "content": HARD_Q}]
    )
    assert r.headers["x-tela-model"] == LARGE and r.headers["x-tela-fallback"] == "false"
    assert upstreams["large"].statuses() == {429: 1, 200: 1} and upstreams["small"].count() == 0
