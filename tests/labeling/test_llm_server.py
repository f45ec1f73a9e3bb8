"""The bundled OpenAI-compatible server, with the real SmolLM2-135M-Instruct model, through
the real `openai` client: chat, logprobs, assistant continuation, choice constraints, and
the judge stage reading every verdict from it.

One model load for the whole file (tens of seconds on a busy 2-core machine the first time,
when the plain-copy cache is written; a few seconds after).
"""

from __future__ import annotations

import json
import math
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling import verdicts as vd
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import judge_answers
from router_tasks.labeling.llm_server import REUSE_ENV, SERVED_MODEL, local_llm_server
from router_tasks.labeling.smollm2 import auto_dtype
from tests.openai_test_server import write_prompts


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture(scope="module")
def smollm2_url():
    """One float32 server for the file: the greedy answers below must not depend on whether
    this CPU takes the bfloat16 path (a 135M model's bf16 reply to the capital question differs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(REUSE_ENV, raising=False)  # really start one
        with local_llm_server(dtype="float32") as base_url:
            yield base_url


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smollm2_server_answers_over_http(local_root, monkeypatch, smollm2_url):
    assert auto_dtype() in ("bfloat16", "float32")  # "auto" resolves by the CPU's features
    base_url = smollm2_url
    root = base_url.removesuffix("/v1")
    status, health = _get(f"{root}/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == SERVED_MODEL
    assert health["dtype"] == "float32"
    assert [m["id"] for m in _get(f"{base_url}/models")[1]["data"]] == [SERVED_MODEL]

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    def ask(text, max_tokens):
        return client.chat.completions.create(
            model=SERVED_MODEL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens
        )

    # Concurrent requests (batched by the server) each get their own, complete reply.
    with ThreadPoolExecutor(2) as pool:
        capital, story = pool.map(
            lambda a: ask(*a),
            [
                ("What is the capital of France?", 16),
                ("Write a long story about a dragon who learns to fly.", 5),
            ],
        )
    # Sanity of the served model: a short, correct, finished answer.
    assert "Paris" in capital.choices[0].message.content
    assert capital.choices[0].finish_reason == "stop"
    assert capital.usage.completion_tokens < 16
    # max_tokens is respected and reported as a length stop.
    assert story.choices[0].finish_reason == "length"
    assert story.usage.completion_tokens == 5
    assert story.choices[0].message.content.strip()
    assert story.usage.prompt_tokens > 10  # includes the chat template's system turn

    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(
            model=SERVED_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
        )

    # The generate stage's base_url "local" path, pointed at this running server so
    # the model is not loaded twice.
    monkeypatch.setenv(REUSE_ENV, base_url)
    prompts = write_prompts(local_root, [{"prompt": "What is 2 + 2?"}])
    ref = generate_answers(
        prompts,
        models=[{"name": "smollm2", "model": "smollm2", "base_url": "local"}],
        max_tokens=6,
        artifact_root=local_root,
    )
    df = load_table(ref, ArtifactStore(local_root))
    assert len(df) == 1 and df["error"].isna().all()
    assert df["answer"].iloc[0].strip() and 0 < df["output_tokens"].iloc[0] <= 6


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_logprobs_continuation_and_choices_like_a_real_server(smollm2_url):
    client = openai.OpenAI(base_url=smollm2_url, api_key="unused", max_retries=0, timeout=600)
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(
        model=SERVED_MODEL, messages=ask, max_tokens=8, logprobs=True, top_logprobs=3
    )
    choice = plain.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == plain.usage.completion_tokens - (choice.finish_reason == "stop")  # the end token has none
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert bytes(t.bytes).decode() == t.token and t.logprob <= 0
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token  # greedy: the top one
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
    assert client.chat.completions.create(model=SERVED_MODEL, messages=ask, max_tokens=2).choices[0].logprobs is None

    # a judge's verdict position: its own turn continued after "[[", one of five digits
    judged = ask + [
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "Rate that answer from 1 to 5 as [[n]]."},
        {"role": "assistant", "content": "It is right.\n[["},
    ]
    verdict = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=judged,
        max_tokens=1,
        logprobs=True,
        top_logprobs=5,
        extra_body=vd.CONTINUE_OPTIONS | {"top_logprobs": 5},
    )
    alts = verdict.choices[0].logprobs.content[0].top_logprobs
    assert verdict.choices[0].message.content in vd.DIGITS and verdict.usage.completion_tokens == 1
    assert sorted(a.token for a in alts) == list(vd.DIGITS)
    assert sum(math.exp(a.logprob) for a in alts) == pytest.approx(1.0, abs=1e-4)  # renormalised over the choices
    assert alts[0].token == verdict.choices[0].message.content
    # the same continuation unconstrained: the reply continues the turn, it does not start one
    free = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=judged,
        max_tokens=3,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert "It is right" not in free.choices[0].message.content

    for bad, match in [
        ({"top_logprobs": 2}, "requires logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "0 to 20"),
        ({"extra_body": {"guided_choice": ["two words"]}}, "single-token"),
        ({"extra_body": {"continue_final_message": True}}, "add_generation_prompt"),
        (
            {"extra_body": {"continue_final_message": True, "add_generation_prompt": False}},
            "last message to be an assistant",
        ),
    ]:
        with pytest.raises(openai.BadRequestError, match=match):
            client.chat.completions.create(model=SERVED_MODEL, messages=ask, max_tokens=2, **bad)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_judge_gives_every_answer_a_verdict(local_root, monkeypatch, smollm2_url):
    monkeypatch.setenv(REUSE_ENV, smollm2_url)
    rows = [
        {"prompt": "Why is the sky blue?", "reference_answer": "Rayleigh scattering of sunlight.", "dataset": "chat"},
        {"prompt": "Name a prime number.", "reference_answer": "7", "dataset": "chat"},
        {"prompt": "Say hello.", "reference_answer": "Hello!", "dataset": "chat"},
    ]
    prompts = write_prompts(local_root, rows)
    answers = generate_answers(
        prompts,
        models=[{"name": "smollm2", "model": "smollm2", "base_url": "local"}],
        max_tokens=12,
        artifact_root=local_root,
    )
    judge = {"name": "smollm2-judge", "model": "smollm2", "base_url": "local", "max_tokens": 24}
    ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
    store = ArtifactStore(local_root)
    df = load_table(ref, store)
    stats = read_manifest(store, ref)["stats"]
    assert len(df) == 3 and df["failure_reason"].isna().all() and df["score"].between(1, 5).all()
    assert set(df["verdict_method"]) <= {"logprobs", "continuation"}
    for probs, score, expected in zip(df["score_probs"], df["score"], df["score_expected"], strict=False):
        p = json.loads(probs)
        assert sum(p) == pytest.approx(1.0, abs=1e-4) and p.index(max(p)) + 1 == score
        assert expected == pytest.approx(
            sum(q * s for q, s in zip(p, vd.SCORES, strict=False)), abs=1e-5
        )  # probs kept to 6 places
    assert stats["parse_failures"] == 0 and stats["by_judge"]["smollm2-judge"]["path"] == "continue"


def test_local_server_start_failure_is_reported_with_its_log(monkeypatch):
    monkeypatch.delenv(REUSE_ENV, raising=False)
    # A bad argument makes the subprocess exit at once: no model is loaded.
    with pytest.raises(RuntimeError, match=r"exited with code 2 while starting(.|\n)*invalid choice"):
        with local_llm_server(extra_args=["--dtype", "float64"]):
            pass
