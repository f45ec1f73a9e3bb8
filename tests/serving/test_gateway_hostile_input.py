"""Hostile input refused while other clients are served: a body past the cap gets 413
while it is still being sent, a huge prompt under the cap is routed on its bounded prefix,
and bodies that do not parse, whatever their shape (deep nesting included), get 400."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time

import httpx
import pytest

from gateway_world import EASY_Q, HARD_Q, KEY_ENV, UP_KEY, gateway_config, train_champion
from openai_test_server import Reply, ScriptedOpenAIServer
from router_tasks.serving.server import serve_in_thread

CAP = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, minilm):
    root = str(tmp_path_factory.mktemp("hostile") / "artifacts")
    train_champion(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, UP_KEY)
        rule = lambda body: Reply(content="fine", prompt_tokens=3, completion_tokens=1)  # noqa: E731
        with ScriptedOpenAIServer(rule, api_key=UP_KEY) as large, ScriptedOpenAIServer(rule, api_key=UP_KEY) as small:
            gw = serve_in_thread(gateway_config(root, large.base_url, small.base_url, max_body_bytes=CAP))
            try:
                yield gw
            finally:
                gw.stop()


def _routed(client, url, text=None, body: bytes | None = None):
    t = time.perf_counter()
    if body is None:
        r = client.post(url, json={"model": "tela-auto", "messages": [{"role": "user", "content": text}]})
    else:
        r = client.post(url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return time.perf_counter() - t, r


def _oversized_upload(port: int, declared: int, chunked: bool) -> tuple[bytes, int]:
    """Send a body far past the cap without waiting; (the reply, bytes sent when it came)."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {declared}\r\n")
        + "\r\n"
    )
    block = b'{"pad": "' + b"x" * (256 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        reply = b""
        deadline = time.monotonic() + 60
        while sent < declared and time.monotonic() < deadline:
            data = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
            try:
                sock.send(data)
                sent += len(block)
            except (BlockingIOError, InterruptedError):
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                reply += sock.recv(65536)
                if b"\r\n\r\n" in reply:
                    break
            except (BlockingIOError, InterruptedError):
                time.sleep(0.001)
            except ConnectionResetError:
                break
        sock.setblocking(True)
        try:
            while b"\r\n\r\n" not in reply and (more := sock.recv(65536)):
                reply += more
        except OSError:
            pass
    return reply, sent


def test_hostile_bodies_are_refused_while_others_are_served(gateway):
    url = f"{gateway.base_url}/chat/completions"
    port = int(gateway.base_url.split(":")[2].split("/")[0])
    client = httpx.Client(timeout=60)
    quiet = [_routed(client, url, f"{EASY_Q} (quiet {i})")[0] for i in range(12)]

    results: dict = {"oversized": [], "deep": [], "huge_prompt": [], "shapes": []}
    nested = b"[" * 200_000 + b"]" * 200_000
    deep = b'{"model": "tela-auto", "messages": [{"role": "user", "content": ' + nested + b"}]}"
    shapes = [
        b"null",
        b"123",
        b'"text"',
        b"[]",
        b"[" * 100_000,
        b'{"model": 5, "messages": []}',
        b'{"model": "tela-auto", "messages": [{"role": "user", "content": NaN}]}',
        b"\xff\xfe{}",
        b'{"model": "tela-auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
    ]
    huge = HARD_Q + " " + "lorem ipsum dolor sit amet " * 300_000  # ~8 MB, under the cap
    huge_body = json.dumps({"model": "tela-auto", "messages": [{"role": "user", "content": huge}]}).encode()

    def attack():
        with httpx.Client(timeout=120) as c:
            for chunked in (False, True):
                results["oversized"].append(_oversized_upload(port, 200 * 1024 * 1024, chunked))
            for _ in range(2):
                results["huge_prompt"].append(_routed(c, url, body=huge_body)[1])
            for _ in range(5):
                results["deep"].append(c.post(url, content=deep, headers={"content-type": "application/json"}))
            results["shapes"] += [c.post(url, content=b, headers={"content-type": "application/json"}) for b in shapes]

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for t in attackers:
        t.start()
    during = []
    while any(t.is_alive() for t in attackers):
        during.append(_routed(client, url, f"{EASY_Q} (during {len(during)})")[0])
    for t in attackers:
        t.join()

    for reply, sent in results["oversized"]:
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"limit of 16777216 bytes" in reply
        assert sent < 100 * 1024 * 1024  # refused while the body was still coming, not after reading it
    for r in results["deep"] + results["shapes"]:
        assert r.status_code == 400, (r.status_code, r.text[:200])
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert any("nested too deeply" in r.json()["error"]["message"] for r in results["deep"])
    # the huge prompt was routed on its prefix: the same score as the prefix alone
    prefix_chars = gateway.gateway.holder.current.route_chars
    _, alone = _routed(client, url, huge[:prefix_chars])
    for r in results["huge_prompt"]:
        assert r.headers["x-tela-score"] == alone.headers["x-tela-score"]
    # and everyone else was served as usual meanwhile
    assert len(during) >= 3
    print(
        f"routed latency quiet p50 {statistics.median(quiet) * 1000:.0f} ms, during the attack "
        f"p50 {statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms ({len(during)} requests)"
    )
    # (loose bounds: the test's clients, upstreams and gateway share one process and its GIL;
    # routing a whole 8 MB prompt instead of its prefix takes seconds on the routing thread)
    assert statistics.median(during) < 10 * statistics.median(quiet) + 0.5
    assert max(during) < 3.0
