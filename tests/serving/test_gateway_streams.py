"""Streams that never lie, over real HTTP: an upstream that answers a stream request
without streaming, one that drops the connection before its first event (the gateway falls
back), and one that breaks mid-way (the stream ends with an OpenAI-style error event)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from gateway_world import HARD_Q, KEY_ENV, LARGE, SMALL, UP_KEY, gateway_config, train_champion
from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text
from router_tasks.core.store import ArtifactStore
from router_tasks.serving.server import serve_in_thread
from router_tasks.serving.traffic import read_window


@pytest.fixture(scope="module")
def root(tmp_path_factory, minilm):
    root = str(tmp_path_factory.mktemp("streams") / "artifacts")
    train_champion(root)
    return root


@pytest.fixture
def world(root, monkeypatch):
    monkeypatch.setenv(KEY_ENV, UP_KEY)
    echo = lambda tag: (
        lambda b: Reply(
            content=f"{tag} answers {last_user_text(b)}",
            prompt_tokens=9,  # noqa: E731
            completion_tokens=4,
        )
    )
    with (
        ScriptedOpenAIServer(echo("large"), api_key=UP_KEY) as large,
        ScriptedOpenAIServer(echo("small"), api_key=UP_KEY) as small,
    ):
        gw = serve_in_thread(gateway_config(root, large.base_url, small.base_url))
        try:
            yield {
                "gw": gw,
                "large": large,
                "small": small,
                "client": openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0),
            }
        finally:
            gw.stop()


def _rows(root):
    now = datetime.now(UTC)
    return read_window(ArtifactStore(root), now - timedelta(minutes=5), now + timedelta(minutes=1))


def _data_lines(response) -> list[str]:
    return [ln for ln in response.iter_lines() if ln.startswith("data:")]


def test_a_plain_reply_to_a_stream_request_is_relayed_as_a_stream(world, root):
    world["large"].rule = lambda b: Reply(
        content="large answers in one piece", stream="json", prompt_tokens=9, completion_tokens=5
    )
    chunks = list(
        world["client"].chat.completions.create(
            model="tela-auto",
            messages=[{"role": "user", "content": HARD_Q}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "large answers in one piece"
    assert chunks[0].model_extra["tela_routing"]["model"] == LARGE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    with httpx.stream(
        "POST",
        f"{world['gw'].base_url}/chat/completions",
        json={"model": LARGE, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = _data_lines(r)
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    world["gw"].stop()
    rows = _rows(root)
    row = rows[rows["prompt"] == HARD_Q].iloc[-1]
    assert row["status"] == 200 and row["output_tokens"] == 5 and row["stream"]


def test_a_stream_that_drops_before_its_first_event_falls_back(world):
    world["large"].rule = lambda b: Reply(content="never seen", stream="break", break_after=0)
    raw = world["client"].chat.completions.with_raw_response.create(
        model="tela-auto", messages=[{"role": "user", "content": HARD_Q}], stream=True
    )
    assert raw.headers["x-tela-model"] == SMALL and raw.headers["x-tela-fallback"] == "true"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"small answers {HARD_Q}"
    assert chunks[0].model_extra["tela_routing"]["fallback_from"] == [LARGE]
    assert world["large"].statuses() == {"broken": 1}


def test_a_stream_that_breaks_midway_ends_with_an_error_event(world, root):
    world["large"].rule = lambda b: Reply(content="one two three four five six seven", stream="break", break_after=3)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in world["client"].chat.completions.create(
            model=LARGE, messages=[{"role": "user", "content": "count for me"}], stream=True
        ):
            received.append(chunk)
    assert received and "acme-large" in str(err.value.message) and "after the stream began" in err.value.message
    with httpx.stream(
        "POST",
        f"{world['gw'].base_url}/chat/completions",
        json={"model": LARGE, "stream": True, "messages": [{"role": "user", "content": "again"}]},
    ) as r:
        assert r.status_code == 200  # the headers went out with the first event
        lines = _data_lines(r)
    last = json.loads(lines[-1][5:])
    assert "data: [DONE]" not in lines and last["error"]["type"] == "server_error"
    assert last["error"]["code"] == "upstream_stream_error"
    world["gw"].stop()
    rows = _rows(root)
    broken = rows[rows["prompt"].isin(["count for me", "again"])]
    assert len(broken) == 2 and (broken["status"] == 502).all() and broken["error"].notna().all()
