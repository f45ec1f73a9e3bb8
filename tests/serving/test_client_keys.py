"""Client keys and their limits, as a team uses them: `tela keys` writes the KEYS file,
`tela serve --keys` checks every /v1 request against it (401), counts requests per
minute and dollars per day per key (429 with Retry-After), sees revocations while
running, and with `--redis-url` several gateways enforce one limit (a real Redis)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from gateway_world import (
    EASY_Q,
    HARD_Q,
    KEY_ENV,
    LARGE,
    SMALL,
    UP_KEY,
    gateway_config,
    redis_server,
    train_champion,
)
from openai_test_server import Reply, ScriptedOpenAIServer, last_user_text
from router_tasks import cli
from router_tasks.core.store import ArtifactStore
from router_tasks.serving import keys as client_keys
from router_tasks.serving.server import serve_in_thread
from router_tasks.serving.traffic import read_window


@pytest.fixture(scope="module")
def root(tmp_path_factory, minilm):
    root = str(tmp_path_factory.mktemp("keys") / "artifacts")
    train_champion(root)
    return root


@pytest.fixture
def upstreams(monkeypatch):
    monkeypatch.setenv(KEY_ENV, UP_KEY)
    rule = lambda b: Reply(content=f"ok: {last_user_text(b)}", prompt_tokens=10, completion_tokens=5)  # noqa: E731
    with ScriptedOpenAIServer(rule, api_key=UP_KEY) as large, ScriptedOpenAIServer(rule, api_key=UP_KEY) as small:
        yield large, small


@pytest.fixture
def start(root, upstreams):
    running = []

    def start_gateway(**cfg):
        gw = serve_in_thread(gateway_config(root, upstreams[0].base_url, upstreams[1].base_url, **cfg))
        running.append(gw)
        return gw

    yield start_gateway
    for gw in running:
        gw.stop()


def _keys_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["keys", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _create(capsys, path, name, *limits) -> str:
    code, out, err = _keys_cli(capsys, "create", "--file", str(path), "--name", name, *limits)
    assert code == 0, err
    return out.strip().splitlines()[-1]


def _chat(gw, key, text=EASY_Q, model="tela-auto"):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers=headers,
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": text}]},
    )


def test_keys_cli_keeps_hashes_only(tmp_path, capsys):
    path = tmp_path / "KEYS"
    key = _create(capsys, path, "web-app", "--rpm", "60", "--usd-per-day", "2.5")
    assert key.startswith("tela-") and len(key) > 40
    text = path.read_text()
    assert key not in text and client_keys.key_hash(key) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    code, out, _ = _keys_cli(capsys, "list", "--file", str(path))
    listed = json.loads(out)
    assert listed == [
        {"name": "web-app", "rpm": 60, "usd_per_day": 2.5, "created_at": listed[0]["created_at"], "revoked_at": None}
    ]
    # one active key per name; a bad name or limit is refused naming it
    code, _, err = _keys_cli(capsys, "create", "--file", str(path), "--name", "web-app")
    assert code == 2 and "'web-app' is active" in err
    code, _, err = _keys_cli(capsys, "create", "--file", str(path), "--name", "no spaces")
    assert code == 2 and "--name 'no spaces'" in err
    code, _, err = _keys_cli(capsys, "create", "--file", str(path), "--name", "x", "--rpm", "0")
    assert code == 2 and "rpm must be a positive integer" in err
    code, out, _ = _keys_cli(capsys, "revoke", "--file", str(path), "--name", "web-app")
    assert code == 0 and json.loads(out)["revoked_at"]
    code, _, err = _keys_cli(capsys, "revoke", "--file", str(path), "--name", "web-app")
    assert code == 2 and "no active key named 'web-app'" in err
    rotated = _create(capsys, path, "web-app")  # rotation: a new key under the same name
    assert rotated != key and set(client_keys.active_keys(str(path))) == {client_keys.key_hash(rotated)}


def test_serve_refuses_to_start_without_keys_or_no_auth(tmp_path, capsys):
    models = json.dumps([{"name": "m", "model": "m", "base_url": "http://127.0.0.1:9/v1"}])
    assert cli.main(["serve", "--models", models]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--keys KEYS" in err and "--no-auth" in err
    path = tmp_path / "KEYS"
    _create(capsys, path, "a")
    assert cli.main(["serve", "--models", models, "--keys", str(path), "--workers", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--workers 3 with --keys needs --redis-url" in err


def test_keys_rpm_and_names_in_logs_and_metrics(start, root, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "KEYS"
    limited = _create(capsys, path, "batch-job", "--rpm", "2")
    free = _create(capsys, path, "web-app")
    gw = start(keys_file=str(path))
    base = gw.base_url.removesuffix("/v1")

    r = _chat(gw, None)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = _chat(gw, "tela-not-a-key")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="tela-wrong", max_retries=0).models.list()
    assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/metrics").status_code == 200

    assert [_chat(gw, limited).status_code for _ in range(2)] == [200, 200]
    r = _chat(gw, limited)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and "'batch-job'" in err["message"]
    assert "2 requests per minute" in err["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 30  # one request every 30 s fits again
    client = openai.OpenAI(base_url=gw.base_url, api_key=limited, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="tela-auto", messages=[{"role": "user", "content": "x"}])
    assert _chat(gw, free, HARD_Q).status_code == 200  # another key is not limited by it

    metrics = httpx.get(f"{base}/metrics").text
    assert 'key="batch-job"' in metrics and 'key="web-app"' in metrics
    assert 'tela_refused_total{reason="rate_limit_exceeded",status="429"} 2' in metrics
    gw.stop()
    now = datetime.now(UTC)
    df = read_window(ArtifactStore(root), now - timedelta(minutes=5), now + timedelta(minutes=1))
    assert df["key_name"].value_counts().to_dict() == {"batch-job": 2, "web-app": 1}
    store = ArtifactStore(root)
    blob = b"".join(store.read_bytes(k) for k in store.list("traffic/"))
    for secret in (limited, free, UP_KEY):
        assert secret.encode() not in blob and secret not in caplog.text and secret not in metrics


def test_spend_limit_from_endpoint_prices(start, tmp_path, capsys):
    path = tmp_path / "KEYS"
    # one answer from the large model costs (10 x $10 + 5 x $30) / 1M = $0.00025
    key = _create(capsys, path, "tight", "--usd-per-day", "0.0002")
    gw = start(keys_file=str(path))
    assert _chat(gw, key, model=LARGE).status_code == 200
    r = _chat(gw, key, model=SMALL)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "insufficient_quota" and "$0.0002 per UTC day" in err["message"]
    assert "has spent $0.00025 today" in err["message"]
    now = time.time()
    assert abs(int(r.headers["Retry-After"]) - (86400 - now % 86400)) < 5  # UTC midnight


def test_a_revoked_key_stops_working_on_a_running_gateway(start, tmp_path, capsys):
    path = tmp_path / "KEYS"
    key = _create(capsys, path, "temp")
    gw = start(keys_file=str(path), keys_reload_s=0.1)
    assert _chat(gw, key).status_code == 200
    assert cli.main(["keys", "revoke", "--file", str(path), "--name", "temp"]) == 0
    deadline = time.monotonic() + 15
    while _chat(gw, key).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)
    added = _create(capsys, path, "late")  # and a key created meanwhile starts working
    deadline = time.monotonic() + 15
    while _chat(gw, added).status_code != 200:
        assert time.monotonic() < deadline, "the new key is not accepted"
        time.sleep(0.1)


def test_two_gateways_share_limits_through_redis(start, tmp_path, capsys):
    path = tmp_path / "KEYS"
    key = _create(capsys, path, "shared", "--rpm", "3")
    spender = _create(capsys, path, "spender", "--usd-per-day", "0.0002")
    with redis_server() as url:
        one, two = start(keys_file=str(path), redis_url=url), start(keys_file=str(path), redis_url=url)
        codes = [_chat(gw, key).status_code for gw in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]
        r = _chat(one, key)
        assert r.status_code == 429 and "3 requests per minute" in r.json()["error"]["message"]
        # spend charged by one gateway is seen by the other
        assert _chat(one, spender, model=LARGE).status_code == 200
        r = _chat(two, spender, model=SMALL)
        assert r.status_code == 429 and r.json()["error"]["code"] == "spend_limit_exceeded"
        assert httpx.get(one.base_url.removesuffix("/v1") + "/health").json()["limits"] == "redis"
    # Redis gone: a limited key is refused with 503 (its limit cannot be checked); an unlimited one still works
    r = _chat(one, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    unlimited = _create(capsys, path, "unlimited")
    deadline = time.monotonic() + 15
    while (code := _chat(one, unlimited).status_code) == 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert code == 200


def test_a_stream_the_client_abandons_is_still_logged_and_charged(start, root, upstreams, tmp_path, capsys):
    """A client that hangs up mid-stream cancels the relay: its row and its spend (counted in
    Redis, an await the cancellation would cut short) must still be recorded."""
    path = tmp_path / "KEYS"
    key = _create(capsys, path, "streamer", "--usd-per-day", "0.00001")
    upstreams[0].rule = lambda b: Reply(content=" ".join(f"w{i}" for i in range(30)), chunk_delay_s=0.1)
    with redis_server() as url:
        gw = start(keys_file=str(path), redis_url=url)
        with httpx.stream(
            "POST",
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": LARGE, "stream": True, "messages": [{"role": "user", "content": "abandon"}]},
            timeout=30,
        ) as r:
            lines = [ln for _, ln in zip(range(4), r.iter_lines(), strict=False) if ln.startswith("data:")]
        assert lines  # the client read a few events, then hung up
        probe = lambda: (
            httpx.post(
                f"{gw.base_url}/feedback",
                headers={"Authorization": f"Bearer {key}"},  # noqa: E731
                json={"id": "chatcmpl-x", "score": 3},
            ).status_code
        )  # costs nothing
        deadline = time.monotonic() + 15
        while (code := probe()) == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert code == 429  # what the abandoned stream cost was charged to the key's day
        gw.stop()
    now = datetime.now(UTC)
    df = read_window(ArtifactStore(root), now - timedelta(minutes=5), now + timedelta(minutes=1))
    row = df[df["prompt"] == "abandon"].iloc[-1]
    assert row["key_name"] == "streamer" and row["stream"] and row["output_tokens"] >= 1
