"""The client path under injected faults, measured at a real HTTP server: no row lost, no
successful request paid twice, the concurrency cap never exceeded."""

from __future__ import annotations

import pandas as pd

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.generate import generate_answers, generate_part
from router_tasks.labeling.judge import judge_answers
from tests.openai_test_server import Faults, ScriptedOpenAIServer, last_user_text, write_prompts


def test_faults_lose_no_row_resend_no_success_and_respect_the_cap(local_root):
    store = ArtifactStore(local_root)
    texts = [f"prompt number {i}" for i in range(60)]
    prompts = write_prompts(local_root, [{"prompt": t, "shard": i % 2} for i, t in enumerate(texts)])
    faults = Faults(
        seed=3,
        latency_s=0.02,
        rate_429=0.15,
        rate_500=0.1,
        rate_timeout=0.05,
        rate_truncated=0.05,
        retry_after_ms=5,
        timeout_sleep_s=1.5,
    )
    with ScriptedOpenAIServer(lambda body: f"answer: {last_user_text(body)}", faults=faults) as srv:
        model = {
            "name": "m",
            "model": "m",
            "base_url": srv.base_url,
            "concurrency": 3,
            "max_retries": 1,
            "timeout_s": 0.5,
        }
        ref = generate_answers(prompts, models=[model], artifact_root=local_root, max_failure_rate=1.0)
        first = srv.stats()
        df = load_table(ref, store)
        # 0 lost: one row per prompt, each with an answer or a recorded reason
        assert len(df) == 60 and df["prompt_id"].is_unique
        assert (df["answer"].notna() ^ df["error"].notna()).all()
        assert df["answer"].notna().sum() >= 45  # most faults were retried away
        failed = df[df["error"].notna()]
        assert failed["error"].str.contains("HTTP 429|HTTP 500|timeout|malformed response", case=False).all(), failed[
            "error"
        ].tolist()
        # the cap, measured at the server
        assert first["max_in_flight"] <= 3
        assert set(first["faults"]) >= {"429", "500", "timeout"}
        # the client's retries, counted by the client, match what the server saw
        parts = read_manifest(store, ref)["stats"]["models"]["m"]
        assert parts["attempts"] == first["requests"] and parts["retries"] == first["requests"] - parts["calls"] > 0

        # A grown prompt set, faults off: only the failed rows and the new prompt are asked
        grown = write_prompts(local_root, [{"prompt": t, "shard": i % 2} for i, t in enumerate(texts + ["one more"])])
        srv.faults = Faults()
        again = generate_answers(grown, models=[model], artifact_root=local_root, max_failure_rate=1.0)
        asked = srv.user_texts()[first["requests"] :]
        assert sorted(asked) == sorted(set(failed_texts(df, prompts, store)) | {"one more"})
        assert srv.stats()["resent_after_success"] == 0  # no success was ever paid for twice
        assert load_table(again, store)["error"].isna().all()


def failed_texts(df, prompts, store):
    by_id = load_table(prompts, store).set_index("prompt_id")["prompt"]
    return [by_id[p] for p in df.loc[df["error"].notna(), "prompt_id"]]


def test_judge_replies_without_a_verdict_are_kept_and_counted(local_root):
    store = ArtifactStore(local_root)
    prompts = write_prompts(local_root, [{"prompt": f"q{i}", "reference_answer": f"r{i}"} for i in range(40)])
    with ScriptedOpenAIServer(lambda body: "fine") as weak:
        answers = generate_answers(
            prompts, models=[{"model": "w", "base_url": weak.base_url}], artifact_root=local_root
        )
    with ScriptedOpenAIServer(lambda body: "Looks right.\n[[5]]", faults=Faults(seed=1, rate_no_verdict=0.25)) as j:
        ref = judge_answers(
            prompts,
            answers,
            judge={"model": "j", "base_url": j.base_url},
            artifact_root=local_root,
            thresholds={"max_parse_failure_rate": 1.0},
        )
        no_verdict = j.stats()["faults"].get("no_verdict", 0)
    df = load_table(ref, store)
    assert len(df) == 40 and 0 < no_verdict < 40
    missing = df[df["failure_reason"] == "no [[n]] verdict"]
    assert len(missing) == no_verdict and missing["score"].isna().all()
    assert missing["judge_raw"].str.contains("Looks right").all()  # the raw text is kept
    assert (df["score"].dropna() == 5).all()
    stats = read_manifest(store, ref)["stats"]
    assert stats["parse_failure_rate"] == round(no_verdict / 40, 4)
    assert pd.isna(df["score"]).sum() == no_verdict


def test_a_truncated_reply_is_retried_like_an_http_error(local_root):
    prompts = write_prompts(local_root, [{"prompt": "cut me"}, {"prompt": "cut me too"}])
    faults = Faults(fail_first=1, fail_first_with="truncated")
    with ScriptedOpenAIServer(lambda body: "whole", faults=faults) as srv:
        ok = generate_answers(
            prompts,
            models=[{"name": "m", "model": "m", "base_url": srv.base_url, "max_retries": 1}],
            artifact_root=local_root,
        )
        assert srv.count() == 4 and load_table(ok, ArtifactStore(local_root))["answer"].tolist() == ["whole", "whole"]
        srv.faults = Faults(fail_first=5, fail_first_with="truncated")
        parts = [
            generate_part(
                prompts,
                model={"name": "m", "model": "m2", "base_url": srv.base_url, "max_retries": 1},
                artifact_root=local_root,
                max_failure_rate=1.0,
            )
        ]
        assert srv.count() == 4 + 2 * 2  # each tried twice, then recorded
    errors = load_table(parts[0], ArtifactStore(local_root))["error"]
    assert errors.str.startswith("malformed response: the body is not valid JSON").all()


def test_chat_many_stops_sending_once_a_worker_gets_a_fatal_reply(monkeypatch):
    import pytest

    from router_tasks.core.endpoints import Endpoint
    from router_tasks.labeling.llm_client import EndpointSession, chat_many

    monkeypatch.setenv("CM_WRONG_KEY", "sk-not-the-key")
    with ScriptedOpenAIServer(lambda body: "fine", api_key="the-right-key") as srv:
        ep = Endpoint.from_dict(
            {
                "name": "m",
                "model": "m-1",
                "base_url": srv.base_url,
                "max_retries": 0,
                "concurrency": 4,
                "api_key_env": "CM_WRONG_KEY",
            }
        )
        seen = []
        with EndpointSession(ep) as session:
            # an on_result that does not raise: chat_many says it was stopped rather than
            # returning a list with holes
            with pytest.raises(RuntimeError, match="stopped by stop_if"):
                chat_many(
                    session.client(),
                    [[{"role": "user", "content": f"q{i}"}] for i in range(60)],
                    on_result=lambda i, res: seen.append(res.status),
                    stop_if=lambda res: res.status == 401,
                )
        assert srv.count() <= 4  # only what was on the wire when the first 401 came back
        assert seen and set(seen) == {401}
        # without stop_if every conversation is sent
        with EndpointSession(ep) as session:
            results = chat_many(session.client(), [[{"role": "user", "content": f"r{i}"}] for i in range(12)])
        assert len(results) == 12 and all(r.status == 401 for r in results)
