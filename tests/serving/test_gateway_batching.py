"""The gateway under concurrent requests: prompts that arrive together are scored in
batches, with the same decisions as one at a time; and nothing the gateway keeps grows with
the number of requests it serves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from conftest import ROUTER_EASY, ROUTER_HARD
from gateway_world import KEY_ENV, UP_KEY, gateway_config, train_champion
from openai_test_server import Reply, ScriptedOpenAIServer
from router_tasks.core.store import ArtifactStore
from router_tasks.routers.embeddings import clear_memory_cache
from router_tasks.serving.server import serve_in_thread
from router_tasks.serving.traffic import TrafficLog

PROMPTS = [f"{p} Please answer for case {i}." for i, p in enumerate(ROUTER_EASY + ROUTER_HARD)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, minilm):
    root = str(tmp_path_factory.mktemp("batching") / "artifacts")
    train_champion(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, UP_KEY)
        rule = lambda body: Reply(content="fine", prompt_tokens=3, completion_tokens=1, delay_s=0.05)  # noqa: E731
        with ScriptedOpenAIServer(rule, api_key=UP_KEY) as large, ScriptedOpenAIServer(rule, api_key=UP_KEY) as small:
            # heap trimming every 0.2 s: it shares the routing thread with the batches
            gw = serve_in_thread(gateway_config(root, large.base_url, small.base_url, trim_s=0.2))
            try:
                yield gw
            finally:
                gw.stop()


def _decision(r: httpx.Response) -> tuple[float, str]:
    assert r.status_code == 200, r.text
    return float(r.headers["x-tela-score"]), r.headers["x-tela-model"]


def _body(prompt: str, model: str = "tela-auto") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def test_concurrent_prompts_are_scored_together_with_the_same_decisions(gateway):
    url = f"{gateway.base_url}/chat/completions"
    batcher = gateway.gateway.batcher
    clear_memory_cache()  # every prompt is embedded, not looked up
    with httpx.Client(timeout=60) as client:
        one_at_a_time = {p: _decision(client.post(url, json=_body(p))) for p in PROMPTS}
    batches, prompts = batcher.batches, batcher.prompts
    assert batcher.largest_batch == 1  # one client: one prompt per scoring call

    clear_memory_cache()

    async def together():
        limits = httpx.Limits(max_connections=len(PROMPTS))
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            replies = await asyncio.gather(*[client.post(url, json=_body(p)) for p in PROMPTS])
        return {p: _decision(r) for p, r in zip(PROMPTS, replies, strict=False)}

    concurrent = asyncio.run(together())
    assert batcher.prompts - prompts == len(PROMPTS)
    assert batcher.batches - batches < len(PROMPTS) and batcher.largest_batch > 1
    for p in PROMPTS:
        assert concurrent[p][1] == one_at_a_time[p][1], p
        assert concurrent[p][0] == pytest.approx(one_at_a_time[p][0], abs=1e-5), p
    metrics = httpx.get(gateway.base_url.removesuffix("/v1") + "/metrics").text
    assert f"tela_decision_batch_size_count {batcher.batches}" in metrics
    assert f'tela_decision_batch_size_bucket{{le="1"}} {batcher.batches}' not in metrics  # some batch held more


def test_nothing_grows_with_the_requests_served(gateway):
    url = f"{gateway.base_url}/chat/completions"
    gw = gateway.gateway
    with httpx.Client(timeout=60) as client:
        for i in range(150):
            # distinct share policies (client input) and distinct unknown model names
            assert client.post(url, json=_body(f"question {i}", f"tela-auto@{i / 1000:.3f}")).status_code == 200
            assert client.post(url, json=_body("q", f"no-such-model-{i}")).status_code == 404
    loaded = gw.holder.current
    assert loaded._share_threshold.cache_info().currsize <= 64
    assert not gw.batcher._pending and not any(isinstance(v, list) and v for v in vars(gw.batcher).values())
    series = {name: len(values) for name, values in gw.metrics._values.items()}
    assert series["tela_requests_total"] <= 4, series  # policy kind x model x status x key: not per request
    assert "no-such-model-7" not in gw.metrics.render()


def test_the_traffic_log_holds_a_bounded_backlog_when_the_store_is_down(s3_root):
    store = ArtifactStore(s3_root.replace("s3://", "s3://no-such-bucket-"))  # every write fails
    log = TrafficLog(store, flush_s=3600, max_pending=50, max_pending_bytes=40_000)
    try:
        for i in range(200):
            log.append({"time": datetime.now(UTC), "prompt": f"p{i}", "model": "m", "status": 200})
        log.flush()  # fails: keeps what it may
        assert log.pending == 50 and log.dropped == 150
        assert [row["prompt"] for row, _ in log._rows][-1] == "p199"  # the newest rows are the ones kept
        for i in range(20):  # long prompts: bounded by bytes too
            log.append({"prompt": f"{i} " + "x" * 5000, "model": "m", "status": 200})
        assert log.pending_bytes <= 40_000 and log.pending < 10
        log.append({"prompt": "y" * 200_000, "model": "m", "status": 200})  # too long to label: no text kept
        assert log._rows[-1][0]["prompt"] is None and log.pending_bytes <= 40_000
    finally:
        log._stop = True
