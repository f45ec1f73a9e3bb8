"""What a re-run promises: failed rows asked again and only they, a breaker that stops a
broken endpoint in a few requests, redacted errors, truncated replies cached, batch
replies kept when a batch expires, prompt versions in the keys."""

from __future__ import annotations

import socket
import threading

import pytest

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling import generate as generate_mod
from router_tasks.labeling.generate import generate_answers, generate_part
from router_tasks.labeling.judge import judge_answers
from router_tasks.labeling.judge_batch import batch_lines, run_judge_batch
from router_tasks.labeling.llm_client import EndpointDown, redact_secrets
from tests.openai_test_server import Reply, ScriptedOpenAIServer, last_user_text, write_prompts

TEXTS = [f"Tell me about topic {i}." for i in range(6)]


def _model(srv, **kw):
    return {"name": "m", "model": "m-1", "base_url": srv.base_url, "max_retries": 0, **kw}


def test_failed_rows_are_asked_again_and_only_they(local_root):
    prompts = write_prompts(local_root, [{"prompt": t} for t in TEXTS])
    failing = {TEXTS[1], TEXTS[4]}

    def rule(body):
        text = last_user_text(body)
        return Reply(status=503, error_message="overloaded") if text in failing else f"about {text}"

    with ScriptedOpenAIServer(rule) as srv:
        first = generate_answers(prompts, models=[_model(srv)], artifact_root=local_root, max_failure_rate=0.5)
        assert srv.count() == 6
        df = load_table(first, ArtifactStore(local_root))
        assert df["error"].notna().sum() == 2  # kept as rows, not dropped
        failing.clear()  # the endpoint recovers
        second = generate_answers(prompts, models=[_model(srv)], artifact_root=local_root, max_failure_rate=0.5)
        assert srv.count() == 8  # exactly the two failed rows, nothing that had succeeded
        assert sorted(srv.user_texts()[6:]) == sorted([TEXTS[1], TEXTS[4]])
        df = load_table(second, ArtifactStore(local_root))
        assert df["error"].isna().all() and df["answer"].notna().all()
        third = generate_answers(prompts, models=[_model(srv)], artifact_root=local_root, max_failure_rate=0.5)
        assert srv.count() == 8 and third["reused"]


def test_breaker_stops_on_401_in_a_few_requests(local_root):
    prompts = write_prompts(local_root, [{"prompt": f"q{i}"} for i in range(40)])
    with ScriptedOpenAIServer(lambda b: "fine", api_key="the-right-key") as srv:
        ep = _model(srv, api_key_env="LC_WRONG_KEY", concurrency=2, max_retries=3)
        import os

        os.environ["LC_WRONG_KEY"] = "sk-wrongwrongwrong1234"
        try:
            with pytest.raises(EndpointDown, match=r"endpoint 'm'.*HTTP 401") as err:
                generate_part(prompts, model=ep, artifact_root=local_root)
        finally:
            del os.environ["LC_WRONG_KEY"]
        assert err.value.status == 401
        assert srv.count() <= 2  # the first refusal stops it: at most the 2 calls already on the wire
        assert "sk-wrong" not in str(err.value)


def _dead_port_server():
    """A port that accepts and hangs up at once: every request is a connection error."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted = []

    def loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return sock, accepted


def test_breaker_stops_on_a_dead_url_in_a_bounded_number_of_requests(local_root):
    prompts = write_prompts(local_root, [{"prompt": f"q{i}"} for i in range(60)])
    sock, accepted = _dead_port_server()
    try:
        ep = {
            "name": "dead",
            "model": "x",
            "base_url": f"http://127.0.0.1:{sock.getsockname()[1]}/v1",
            "max_retries": 1,
            "concurrency": 2,
            "max_consecutive_failures": 4,
            "timeout_s": 5,
        }
        with pytest.raises(EndpointDown, match=r"endpoint 'dead'.*4 failed calls in a row.*no HTTP status"):
            generate_part(prompts, model=ep, artifact_root=local_root)
    finally:
        sock.close()
    # 4 failed calls + those in flight, each with its one retry: far from 60 x 2
    assert len(accepted) <= (4 + 2) * 2


def test_error_texts_are_stored_redacted(local_root):
    secret = "sk-proj-Abc123Def456Ghi789Jkl"
    prompts = write_prompts(local_root, [{"prompt": "hi"}, {"prompt": "ho"}])

    def rule(body):
        if last_user_text(body) == "hi":
            return Reply(
                status=400, error_message=f"Incorrect API key provided: {secret}. Authorization: Bearer {secret}"
            )
        return "fine"

    with ScriptedOpenAIServer(rule) as srv:
        ref = generate_answers(prompts, models=[_model(srv)], artifact_root=local_root, max_failure_rate=0.9)
    df = load_table(ref, ArtifactStore(local_root))
    error = df["error"].dropna().iloc[0]
    assert "HTTP 400" in error and "[REDACTED]" in error
    assert "Abc123" not in error and "Bearer sk" not in error
    assert redact_secrets("token=abcdef123456&x=1 api_key: 'zzz-top'") == "token=[REDACTED]&x=1 api_key: '[REDACTED]'"


def test_truncated_replies_are_cached_and_a_larger_max_tokens_asks_again(local_root):
    prompts = write_prompts(local_root, [{"prompt": "write a long story"}])
    with ScriptedOpenAIServer(lambda b: Reply("Once upon a", finish_reason="length")) as srv:
        generate_answers(prompts, models=[_model(srv, max_tokens=3)], artifact_root=local_root)
        assert srv.count() == 1
        # another artifact (a new prompts fingerprint), the same request: from the cache
        other = write_prompts(local_root, [{"prompt": "write a long story", "dataset": "other"}])
        ref = generate_answers(other, models=[_model(srv, max_tokens=3)], artifact_root=local_root)
        assert srv.count() == 1 and load_table(ref, ArtifactStore(local_root))["finish_reason"].tolist() == ["length"]
        generate_answers(other, models=[_model(srv, max_tokens=50)], artifact_root=local_root)
        assert srv.count() == 2


def test_prompt_version_is_in_the_generate_keys(local_root, monkeypatch):
    prompts = write_prompts(local_root, [{"prompt": "p"}])
    with ScriptedOpenAIServer(lambda b: "a") as srv:
        before = generate_part(prompts, model=_model(srv), artifact_root=local_root, shard=0)
        monkeypatch.setattr(generate_mod, "PROMPT_VERSION", "answer-v2")
        after = generate_part(prompts, model=_model(srv), artifact_root=local_root, shard=0)
    assert after["key"] != before["key"] and not after["reused"]
    assert read_manifest(ArtifactStore(local_root), after)["config"]["prompt_version"] == "answer-v2"


def _judge_rule(body):
    return "Fine.\n[[4]]"


def test_an_expired_batch_keeps_its_replies_and_only_the_rest_are_asked(tmp_path):
    root = str(tmp_path)
    rows = [{"prompt": f"Q{i}?", "reference_answer": f"A{i}."} for i in range(6)]
    prompts = write_prompts(root, rows)
    with ScriptedOpenAIServer(lambda b: "an answer") as model_srv:
        answers = generate_answers(prompts, models=[_model(model_srv)], artifact_root=root)
    with ScriptedOpenAIServer(_judge_rule, batch_outcome="expired_partial") as srv:
        judge = {"name": "j", "model": "j-1", "base_url": srv.base_url, "max_retries": 0}
        ref = run_judge_batch(prompts, answers, judge=judge, artifact_root=root, poll_seconds=0.01)
        assert srv.batch_lines == 3
        summary = read_manifest(ArtifactStore(root), ref)["stats"]
        assert summary["calls"] == 3 and summary["failures"] == 0
        assert len(batch_lines(prompts, answers, judge=judge, artifact_root=root)) == 3  # only the rest
        judged = judge_answers(prompts, answers, judge=judge, artifact_root=root)
        assert srv.count() == 3  # online: the three the batch did not answer
        assert load_table(judged, ArtifactStore(root))["score"].tolist() == [4] * 6


def test_batch_mode_refuses_the_local_server(local_root):
    prompts = write_prompts(local_root, [{"prompt": "q", "reference_answer": "a"}])
    with pytest.raises(ValueError, match="base_url 'local'.*has none"):
        batch_lines(
            prompts, prompts, judge={"name": "j", "model": "smollm2", "base_url": "local"}, artifact_root=local_root
        )


def test_one_model_cache_folder(monkeypatch, tmp_path):
    from router_tasks.labeling.smollm2 import default_cache_dir as _default_cache_dir
    from router_tasks.routers.causal_llm.base_models import gguf_cache_dir

    monkeypatch.delenv("TELA_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert str(_default_cache_dir()) == gguf_cache_dir() == str(tmp_path / "tela" / "models")
    monkeypatch.setenv("TELA_MODEL_CACHE", str(tmp_path / "m"))
    assert str(_default_cache_dir()) == gguf_cache_dir() == str(tmp_path / "m")


def test_tela_judge_batch_with_the_local_server_is_refused_clearly(local_root, capsys):
    import json

    from router_tasks.cli import main

    prompts = write_prompts(local_root, [{"prompt": "q", "reference_answer": "a"}])
    args = [
        "--artifact-root",
        local_root,
        "judge",
        "--prompts",
        json.dumps(prompts),
        "--answers",
        json.dumps(prompts),
        "--judge",
        json.dumps({"name": "j", "model": "smollm2", "base_url": "local"}),
        "--batch",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tela judge: error: ") and "base_url 'local'" in err and "Batch API" in err


def test_a_part_writes_its_answers_in_batches(local_root):
    import io

    import pyarrow.parquet as pq

    prompts = write_prompts(local_root, [{"prompt": t} for t in TEXTS])
    with ScriptedOpenAIServer(lambda b: "a") as srv:
        ref = generate_part(prompts, model=_model(srv), shard=0, artifact_root=local_root, batch_rows=2)
    store = ArtifactStore(local_root)
    meta = pq.ParquetFile(io.BytesIO(store.read_bytes(f"{ref['key']}/data.parquet"))).metadata
    assert meta.num_row_groups == 3 and meta.num_rows == 6  # three batches of two, never the table at once
    assert read_manifest(store, ref)["files"]["data.parquet"]["rows"] == 6
