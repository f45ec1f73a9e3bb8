"""Generate stage over real HTTP, against the scripted OpenAI-compatible test server."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from router_tasks.core.endpoints import Endpoint
from router_tasks.core.stage import MANIFEST, load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.generate import (
    ANSWER_COLUMNS,
    combine_answers,
    generate_answers,
    generate_part,
    plan_generation,
)
from router_tasks.labeling.request_cache import CACHE_PREFIX
from tests.openai_test_server import FAST_RETRY, Reply, ScriptedOpenAIServer, last_user_text, write_prompts

SECRET = "sk-test-0123456789abcdef-never-store-me"
PROMPTS = ["What is 2 + 2?", "Name a primary colour.", "Translate 'cat' to French."]


def _table(ref, root):
    return load_table(ref, ArtifactStore(root))


def test_every_prompt_answered_by_every_model_and_rerun_reuses(local_root, monkeypatch):
    monkeypatch.setenv("TELA_TEST_KEY", SECRET)
    prompts = write_prompts(local_root, [{"prompt": p} for p in PROMPTS])

    def rule(body):
        # each model answers in its own recognisable way; usage counts are scripted
        return Reply(content=f"[{body['model']}] {last_user_text(body).upper()}", prompt_tokens=11, completion_tokens=4)

    with ScriptedOpenAIServer(rule, api_key=SECRET) as srv:
        models = [
            {
                "name": "big",
                "model": "big-v1",
                "base_url": srv.base_url,
                "api_key_env": "TELA_TEST_KEY",
                "max_tokens": 7,
            },
            {"name": "small", "model": "small-v2", "base_url": srv.base_url, "api_key_env": "TELA_TEST_KEY"},
        ]
        ref = generate_answers(prompts, models=models, max_tokens=32, artifact_root=local_root)
        assert ref["reused"] is False and ref["rows"] == 6
        assert srv.count() == 6
        assert set(srv.auth_headers) == {f"Bearer {SECRET}"}
        # the endpoint's own max_tokens wins; the stage default fills the other
        assert {b["max_tokens"] for b in srv.requests if b["model"] == "big-v1"} == {7}
        assert {b["max_tokens"] for b in srv.requests if b["model"] == "small-v2"} == {32}
        assert {b["temperature"] for b in srv.requests} == {0.0}

        df = _table(ref, local_root)
        assert list(df.columns) == ANSWER_COLUMNS
        assert sorted(df["model"].unique()) == ["big", "small"]  # the endpoint name labels rows
        by = {(r.model, r.prompt_id): r for r in df.itertuples()}
        pids = load_table(prompts, ArtifactStore(local_root)).set_index("prompt")["prompt_id"]
        for text in PROMPTS:
            assert by[("big", pids[text])].answer == f"[big-v1] {text.upper()}"
            assert by[("small", pids[text])].answer == f"[small-v2] {text.upper()}"
        assert df["error"].isna().all()
        assert (df["finish_reason"] == "stop").all()
        assert (df["input_tokens"] == 11).all() and (df["output_tokens"] == 4).all()
        assert (df["latency_s"] >= 0).all()

        stats = read_manifest(ArtifactStore(local_root), ref)["stats"]
        assert stats["requests"] == 6 and stats["failures"] == 0 and stats["parts"] == 2
        assert stats["models"]["big"]["input_tokens"] == 33 and stats["models"]["small"]["output_tokens"] == 12

        # Re-run with the same inputs and config: the artifact is reused, no request made.
        again = generate_answers(prompts, models=models, max_tokens=32, artifact_root=local_root)
        assert again["reused"] is True and again["key"] == ref["key"]
        assert srv.count() == 6

        # Runtime knobs (concurrency, retries, timeouts) do not change answers: still reused.
        tuned = [dict(m, concurrency=1, max_retries=0, timeout_s=5) for m in models]
        assert generate_answers(prompts, models=tuned, max_tokens=32, artifact_root=local_root)["reused"] is True
        assert srv.count() == 6

        # A setting that changes answers makes a new artifact, with new calls.
        other = generate_answers(prompts, models=models, max_tokens=16, artifact_root=local_root)
        assert other["key"] != ref["key"] and srv.count() == 6 + 3  # only "small" used the default

    # The key is never written anywhere in the artifacts (config holds the variable's name).
    for path in Path(local_root).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    manifest = read_manifest(ArtifactStore(local_root), ref)
    assert "api_key_env" not in str(manifest["config"])  # not even the variable's name: not answer-relevant


def test_failed_requests_are_recorded_not_lost(local_root):
    texts = ["fine question", "FAIL always", "FLAKY once", "long one"]
    prompts = write_prompts(local_root, [{"prompt": t} for t in texts])
    seen: dict[str, int] = {}

    def rule(body):
        text = last_user_text(body)
        seen[text] = seen.get(text, 0) + 1
        if text.startswith("FAIL"):
            return Reply(status=500, error_message="upstream exploded", headers=FAST_RETRY)
        if text.startswith("FLAKY") and seen[text] == 1:
            return Reply(status=503, headers=FAST_RETRY)
        if text.startswith("long"):
            return Reply(content="cut off mid", finish_reason="length")
        return "ok"

    with ScriptedOpenAIServer(rule) as srv:
        ref = generate_answers(
            prompts,
            models=[{"name": "m", "model": "m", "base_url": srv.base_url, "max_retries": 2}],
            artifact_root=local_root,
        )
    df = _table(ref, local_root)
    pids = load_table(prompts, ArtifactStore(local_root)).set_index("prompt")["prompt_id"]
    rows = df.set_index("prompt_id")
    assert len(df) == 4  # every row survives

    failed = rows.loc[pids["FAIL always"]]
    assert pd.isna(failed["answer"]) and pd.isna(failed["finish_reason"])
    assert "500" in failed["error"] and "upstream exploded" in failed["error"]
    assert seen["FAIL always"] == 3  # the client retried twice before giving up

    assert rows.loc[pids["FLAKY once"], "answer"] == "ok"  # a transient 503 was retried
    assert seen["FLAKY once"] == 2
    assert rows.loc[pids["long one"], "finish_reason"] == "length"
    stats = read_manifest(ArtifactStore(local_root), ref)["stats"]
    assert stats["failures"] == 1 and stats["models"]["m"]["truncated"] == 1


def test_mostly_failing_endpoint_aborts_and_rerun_asks_only_missing_rows(local_root):
    texts = ["alpha", "beta", "gamma", "delta"]
    prompts = write_prompts(local_root, [{"prompt": t} for t in texts])
    broken = {"beta", "gamma", "delta"}

    def rule(body):
        text = last_user_text(body)
        return Reply(status=500) if text in broken else f"answer to {text}"

    with ScriptedOpenAIServer(rule) as srv:
        models = [{"name": "m", "model": "m", "base_url": srv.base_url, "max_retries": 0}]
        with pytest.raises(RuntimeError, match=r"3/4 calls to model 'm' failed.*max_failure_rate"):
            generate_answers(prompts, models=models, artifact_root=local_root)
        store = ArtifactStore(local_root)
        # no complete artifact, but the one success is in the request cache
        assert not [k for k in store.list("stages/generate_model") if k.endswith(MANIFEST)]
        assert [k for k in store.list(CACHE_PREFIX) if k.endswith(".parquet")]

        broken.clear()  # the endpoint is fixed
        before = srv.count()
        ref = generate_answers(prompts, models=models, artifact_root=local_root)
        # only the three rows without an answer were asked again
        assert srv.count() - before == 3
        assert sorted(srv.user_texts()[before:]) == ["beta", "delta", "gamma"]
    df = _table(ref, local_root)
    assert sorted(df["answer"]) == [f"answer to {t}" for t in sorted(texts)]
    stats = read_manifest(store, ref)["stats"]
    assert stats["models"]["m"]["cached"] == 1 and stats["models"]["m"]["calls"] == 3


def test_cache_spans_artifacts_a_grown_prompt_set_asks_only_new_prompts(local_root):
    """The request cache outlives artifact keys: one prompt added, one call made."""
    with ScriptedOpenAIServer(lambda body: f"re: {last_user_text(body)}") as srv:
        models = [
            {"name": "m", "model": "m", "base_url": srv.base_url, "price_input_per_m": 2.0, "price_output_per_m": 10.0}
        ]
        first = write_prompts(local_root, [{"prompt": t} for t in ("one", "two")])
        a = generate_answers(first, models=models, artifact_root=local_root)
        grown = write_prompts(local_root, [{"prompt": t} for t in ("one", "two", "three")])
        b = generate_answers(grown, models=models, artifact_root=local_root)
        assert a["key"] != b["key"] and b["reused"] is False
        assert sorted(srv.user_texts()) == ["one", "three", "two"]  # "one" and "two" asked once each
        # a setting that changes replies misses the cache: asked again
        generate_answers(grown, models=[dict(models[0], temperature=0.7)], artifact_root=local_root)
        assert srv.count() == 6
    store = ArtifactStore(local_root)
    part = read_manifest(store, b)["stats"]["models"]["m"]
    assert part["cached"] == 2 and part["calls"] == 1
    # billed: only the call made now; "re: three" is 2 words out, "three" 1 word in
    assert part["input_tokens"] == 1 and part["output_tokens"] == 2
    assert part["dollars"] == pytest.approx((1 * 2.0 + 2 * 10.0) / 1e6)
    # the answers table still carries each reply's own usage, cached or not
    df = _table(b, local_root)
    assert sorted(df["output_tokens"]) == [2, 2, 2]


def test_shards_are_parts_of_their_own(local_root):
    rows = [{"prompt": f"q{i}", "shard": i % 3} for i in range(7)]
    prompts = write_prompts(local_root, rows)
    with ScriptedOpenAIServer(lambda body: "ok") as srv:
        models = [
            {"name": "a", "model": "a", "base_url": srv.base_url},
            {"name": "b", "model": "b", "base_url": srv.base_url},
        ]
        plan = plan_generation(prompts, models=models, artifact_root=local_root)
        assert sorted((p["shard"], p["model"]["name"]) for p in plan) == [(s, m) for s in range(3) for m in ("a", "b")]
        parts = [generate_part(prompts, **p, artifact_root=local_root) for p in plan]
        assert sorted(p["rows"] for p in parts) == [2, 2, 2, 2, 3, 3]
        ref = combine_answers(prompts, parts, models=models, artifact_root=local_root)
        assert ref["rows"] == 14 and srv.count() == 14
        # the one-call path lands on the same artifacts
        assert generate_answers(prompts, models=models, artifact_root=local_root)["key"] == ref["key"]
        assert srv.count() == 14
        with pytest.raises(ValueError, match="a part is missing or repeated"):
            combine_answers(prompts, parts[:-1], models=models, artifact_root=local_root)


def test_missing_key_variable_fails_before_any_request(local_root, monkeypatch):
    monkeypatch.delenv("TELA_UNSET_KEY", raising=False)
    prompts = write_prompts(local_root, [{"prompt": "hi"}])
    with ScriptedOpenAIServer() as srv:
        with pytest.raises(RuntimeError, match=r"endpoint 'paid'.*TELA_UNSET_KEY"):
            generate_answers(
                prompts,
                artifact_root=local_root,
                models=[{"name": "paid", "model": "x", "base_url": srv.base_url, "api_key_env": "TELA_UNSET_KEY"}],
            )
        assert srv.count() == 0


def test_endpoint_config_is_checked():
    with pytest.raises(ValueError, match="api_key_env"):
        Endpoint.from_dict({"name": "a", "model": "a", "api_key": "sk-literal"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['max_token'\]"):
        Endpoint.from_dict({"model": "a", "max_token": 5})
    with pytest.raises(ValueError, match="base_url"):
        Endpoint.from_dict({"model": "a", "base_url": "localhost:8000"})
    with pytest.raises(ValueError, match="'model' is required"):
        Endpoint.from_dict({"name": "a"})
    ep = Endpoint.from_dict({"model": "m", "base_url": "https://user:pw@api.example.com/v1/?key=zzz"})
    assert ep.name == "m"
    assert ep.output_config()["base_url"] == "https://api.example.com/v1"  # credentials stripped
    with pytest.raises(ValueError, match="repeated"):
        generate_answers(
            {"stage": "ingest", "key": "k", "fingerprint": "f"},
            models=[{"model": "m"}, {"model": "m"}],
            artifact_root="/nonexistent",
        )
