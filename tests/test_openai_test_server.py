"""The scripted OpenAI test server itself, through the real `openai` client: fault
injection, server-side measurements, and the Files + Batch API subset."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.openai_test_server import FAST_RETRY, Faults, Reply, ScriptedOpenAIServer, body_key, last_user_text


def client(srv: ScriptedOpenAIServer, **kw) -> openai.OpenAI:
    return openai.OpenAI(api_key="test-key", base_url=srv.base_url, **kw)


def ask(c: openai.OpenAI, text: str, model: str = "m") -> str:
    resp = c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return resp.choices[0].message.content


def outcome(c: openai.OpenAI, text: str) -> str:
    """What the client saw for one call: '200', '429', '500', 'truncated' or 'no_verdict'."""
    try:
        content = ask(c, text)
    except openai.APIStatusError as err:
        return str(err.status_code)
    except json.JSONDecodeError:  # the client parses the cut body and does not retry it
        return "truncated"
    return "200" if "[[" in content else "no_verdict"


JUDGE_TEXT = "Rate the answer. Give the rating as [[n]]. Case {i}"


def judge_rule(body):
    return f"Sound reasoning.\n[[4]] for {last_user_text(body)[-8:]}"


def run_rates(seed: int, n: int = 300) -> tuple[list[str], ScriptedOpenAIServer]:
    faults = Faults(seed=seed, rate_429=0.15, rate_500=0.10, rate_truncated=0.05, rate_no_verdict=0.10)
    with ScriptedOpenAIServer(judge_rule, faults=faults) as srv:
        c = client(srv, max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(lambda i: outcome(c, JUDGE_TEXT.format(i=i)), range(n)))
        c.close()
    return seen, srv


def test_faults_happen_at_their_rates_and_are_deterministic_per_seed():
    seen, srv = run_rates(seed=1)
    got = Counter(seen)
    for kind, rate in (("429", 0.15), ("500", 0.10), ("truncated", 0.05), ("no_verdict", 0.10)):
        assert abs(got[kind] - 300 * rate) < 4 * (300 * rate * (1 - rate)) ** 0.5, (kind, got)
    # the server's own books agree with what the client saw
    stats = srv.stats()
    assert stats["requests"] == 300 and stats["max_successes_per_body"] == 1
    assert stats["statuses"] == {
        200: got["200"] + got["truncated"] + got["no_verdict"],
        429: got["429"],
        500: got["500"],
    }
    assert stats["faults"] == {
        "429": got["429"],
        "500": got["500"],
        "truncated": got["truncated"],
        "no_verdict": got["no_verdict"],
    }
    # same seed, same faults on the same requests; another seed, other ones
    assert run_rates(seed=1, n=100)[0] == seen[:100]
    assert run_rates(seed=2, n=100)[0] != seen[:100]


def test_no_verdict_only_touches_judge_style_requests():
    with ScriptedOpenAIServer(lambda b: "fine [[5]]", faults=Faults(rate_no_verdict=1.0)) as srv:
        c = client(srv)
        assert ask(c, "Give your rating as [[n]].") == "fine "
        assert ask(c, "Just chat.") == "fine [[5]]"  # not a judge prompt: the reply is left alone


def test_rate_limited_requests_are_retried_until_they_succeed_and_never_resent_after():
    faults = Faults(rate_429=0.3, rate_500=0.1, retry_after_ms=1)
    with ScriptedOpenAIServer(faults=faults) as srv:
        c = client(srv, max_retries=8)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: ask(c, f"q{i}"), range(100)))
    assert answers == [f"echo: q{i}" for i in range(100)]
    stats = srv.stats()
    assert stats["requests"] > 100 and stats["statuses"][200] == 100
    assert stats["statuses"][429] + stats["statuses"][500] == stats["requests"] - 100
    assert stats["resent_after_success"] == 0 and stats["max_successes_per_body"] == 1


def test_retry_after_headers_are_honoured_by_the_client():
    # retry-after-ms 20 on three 429s: well under the client's own backoff (0.375 + 0.75 + 1.5 s at least)
    with ScriptedOpenAIServer(faults=Faults(fail_first=3, fail_first_with=429, retry_after_ms=20)) as srv:
        t = time.monotonic()
        assert ask(client(srv, max_retries=3), "x") == "echo: x"
        assert time.monotonic() - t < 0.35
        assert srv.statuses() == {429: 3, 200: 1}
    # Retry-After in seconds: the client waits at least that long
    with ScriptedOpenAIServer(
        faults=Faults(fail_first=1, fail_first_with=503, retry_after_ms=None, retry_after_s=0.6)
    ) as srv:
        t = time.monotonic()
        assert ask(client(srv, max_retries=1), "x") == "echo: x"
        assert time.monotonic() - t >= 0.6
        assert srv.statuses() == {503: 1, 200: 1}
    # out of retries: the client raises the last error
    with ScriptedOpenAIServer(faults=Faults(fail_first=3, fail_first_with=500)) as srv:
        with pytest.raises(openai.InternalServerError):
            ask(client(srv, max_retries=2), "x")
        assert srv.count() == 3 and srv.stats()["max_successes_per_body"] == 0


def test_timeout_fault_trips_the_client_timeout_and_the_retry_succeeds():
    with ScriptedOpenAIServer(faults=Faults(fail_first=1, fail_first_with="timeout", timeout_sleep_s=5)) as srv:
        t = time.monotonic()
        assert ask(client(srv, max_retries=1, timeout=0.3), "slow") == "echo: slow"
        assert time.monotonic() - t < 2.5
        deadline = time.monotonic() + 3
        while srv.statuses().get("abandoned") != 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server notices the hang-up and stops waiting
        assert srv.statuses() == {"abandoned": 1, 200: 1}
        assert srv.stats()["max_in_flight"] == 1 and srv.in_flight == 0
    with ScriptedOpenAIServer(faults=Faults(rate_timeout=1.0, timeout_sleep_s=5)) as srv:
        with pytest.raises(openai.APITimeoutError):
            ask(client(srv, max_retries=0, timeout=0.2), "slow")


def test_truncated_body_reaches_the_client_as_a_json_error():
    with ScriptedOpenAIServer(faults=Faults(fail_first=1, fail_first_with="truncated")) as srv:
        c = client(srv, max_retries=3)
        with pytest.raises(json.JSONDecodeError):
            ask(c, "x")  # not an HTTP error: the openai client does not retry it
        assert ask(c, "x") == "echo: x"  # the next attempt of the same body is whole
        assert srv.stats()["faults"] == {"truncated": 1} and srv.successes[body_key(srv.requests[0])] == 1


@pytest.mark.parametrize("workers", [4, 9])
def test_max_in_flight_counts_concurrent_requests(workers):
    with ScriptedOpenAIServer(faults=Faults(latency_s=0.15)) as srv:
        c = client(srv)
        t = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: ask(c, f"q{i}"), range(3 * workers)))
        elapsed = time.monotonic() - t
        assert srv.max_in_flight == workers and srv.in_flight == 0
        # three waves of `latency_s`: at least their length, and well under one request at a time
        assert 0.45 <= elapsed < 0.75 * 3 * workers * 0.15


def test_reply_status_and_delay_still_work_with_faults_off():
    def rule(body):
        return Reply(status=500, headers=FAST_RETRY) if "bad" in last_user_text(body) else Reply("ok", delay_s=0.05)

    with ScriptedOpenAIServer(rule) as srv:
        c = client(srv, max_retries=1)
        assert ask(c, "good") == "ok"
        with pytest.raises(openai.InternalServerError):
            ask(c, "bad")
        assert srv.statuses() == {200: 1, 500: 2} and srv.stats()["faults"] == {}


# -- Files + Batch API -------------------------------------------------------------------


def batch_jsonl(bodies: list[dict]) -> bytes:
    return "".join(
        json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
        for i, b in enumerate(bodies)
    ).encode()


def body(text: str) -> dict:
    return {"model": "judge", "messages": [{"role": "user", "content": text}], "max_tokens": 16, "temperature": 0.0}


def rule_with_failures(b):
    text = last_user_text(b)
    return Reply(status=500, error_message="line exploded") if "boom" in text else f"answer({text})"


def test_batch_round_trip_matches_online_chat():
    bodies = [body("alpha"), body("beta"), body("boom"), body("gamma")]
    with ScriptedOpenAIServer(rule_with_failures, batch_polls=2) as srv:
        c = client(srv)
        online = c.chat.completions.create(**bodies[0]).choices[0].message.content
        f = c.files.create(file=("in.jsonl", batch_jsonl(bodies)), purpose="batch")
        assert (f.purpose, f.bytes, c.files.retrieve(f.id).filename) == ("batch", len(batch_jsonl(bodies)), "in.jsonl")
        batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert batch.status == "validating" and batch.request_counts.total == 4
        statuses = [c.batches.retrieve(batch.id).status for _ in range(3)]
        assert statuses == ["in_progress", "in_progress", "completed"]
        done = c.batches.retrieve(batch.id)
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)
        assert done.completed_at and done.output_file_id and done.error_file_id

        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["req-0", "req-1", "req-3"]
        assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
        assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == online == "answer(alpha)"
        assert out[0]["response"]["body"]["object"] == "chat.completion"
        err = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
        assert [(e["custom_id"], e["response"]["status_code"]) for e in err] == [("req-2", 500)]

        # batch lines are counted apart from online chat requests
        assert srv.count() == 1 and srv.batch_lines == 4
        assert [b["messages"] for b in srv.batch_requests] == [b["messages"] for b in bodies]
        assert srv.stats()["statuses"] == {200: 1}


def test_batch_cancel_validation_and_scripted_outcomes():
    with ScriptedOpenAIServer(batch_polls=5) as srv:
        c = client(srv)
        fid = c.files.create(file=("in.jsonl", batch_jsonl([body("a")])), purpose="batch").id
        b = c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
        assert c.batches.cancel(b.id).status == "cancelling"
        assert c.batches.retrieve(b.id).status == "cancelled" and srv.batch_lines == 0
        with pytest.raises(openai.BadRequestError):
            c.batches.cancel(b.id)
        # a line for another endpoint fails validation: the whole batch fails
        bad = c.files.create(
            file=("bad.jsonl", batch_jsonl([body("a")]).replace(b"chat/completions", b"embeddings")), purpose="batch"
        ).id
        b = c.batches.create(input_file_id=bad, endpoint="/v1/chat/completions", completion_window="24h")
        failed = c.batches.retrieve(b.id)
        assert failed.status == "failed" and failed.errors.data[0].line == 1
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_nope")
        assert c.files.delete(fid).deleted and fid not in [f.id for f in c.files.list().data]
    with ScriptedOpenAIServer(batch_outcome="expired") as srv:
        c = client(srv)
        fid = c.files.create(file=("in.jsonl", batch_jsonl([body("a")])), purpose="batch").id
        b = c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
        assert c.batches.retrieve(b.id).status == "expired"


def test_airflow_openai_hook_and_trigger_run_a_batch(tmp_path, monkeypatch):
    from airflow.providers.openai.hooks.openai import OpenAIHook
    from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger

    with ScriptedOpenAIServer(batch_polls=2) as srv:
        monkeypatch.setenv(
            "AIRFLOW_CONN_OPENAI_SCRIPTED",
            json.dumps(
                {
                    "conn_type": "openai",
                    "password": "test-key",
                    "extra": {"openai_client_kwargs": {"base_url": srv.base_url}},
                }
            ),
        )
        path = tmp_path / "in.jsonl"
        path.write_bytes(batch_jsonl([body("a"), body("b")]))
        hook = OpenAIHook(conn_id="openai_scripted")
        f = hook.upload_file(str(path), purpose="batch")
        b = hook.create_batch(file_id=f.id, endpoint="/v1/chat/completions")
        hook.wait_for_batch(b.id, wait_seconds=0.01, timeout=10)
        assert hook.get_batch(b.id).request_counts.completed == 2

        b2 = hook.create_batch(file_id=f.id, endpoint="/v1/chat/completions")
        trigger = OpenAIBatchTrigger(conn_id="openai_scripted", batch_id=b2.id, poll_interval=0.01, timeout=10)

        async def first_event():
            async for event in trigger.run():
                return event.payload

        assert asyncio.run(first_event())["status"] == "success"
        assert srv.batch_lines == 4 and srv.count() == 0
