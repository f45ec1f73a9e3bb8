"""The bundled OpenAI-compatible server, with the real SmolLM2-135M-Instruct model.

One model load for the whole file (tens of seconds on a busy 2-core machine the first time,
when the plain-copy cache is written; a few seconds after).
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.llm_server import REUSE_ENV, SERVED_MODEL, auto_dtype, local_llm_server
from router_tasks.core.stage import load_table
from router_tasks.core.store import ArtifactStore
from tests.openai_test_server import write_prompts


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smollm2_server_answers_over_http(local_root, monkeypatch):
    monkeypatch.delenv(REUSE_ENV, raising=False)  # really start one
    # float32 everywhere: the greedy answer below must not depend on whether this CPU takes
    # the bfloat16 path (a 135M model's bf16 reply to the capital question differs).
    assert auto_dtype() in ("bfloat16", "float32")  # "auto" resolves by the CPU's features
    with local_llm_server(dtype="float32") as base_url:
        root = base_url.removesuffix("/v1")
        status, health = _get(f"{root}/health")
        assert status == 200 and health["status"] == "ok" and health["model"] == SERVED_MODEL
        assert health["dtype"] == "float32"
        assert [m["id"] for m in _get(f"{base_url}/models")[1]["data"]] == [SERVED_MODEL]

        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

        def ask(text, max_tokens):
            return client.chat.completions.create(
                model=SERVED_MODEL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens)

        # Concurrent requests (batched by the server) each get their own, complete reply.
        with ThreadPoolExecutor(2) as pool:
            capital, story = pool.map(lambda a: ask(*a), [
                ("What is the capital of France?", 16),
                ("Write a long story about a dragon who learns to fly.", 5),
            ])
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
            client.chat.completions.create(model=SERVED_MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2, stream=True)

        # The generate stage's base_url "local" path, pointed at this running server so
        # the model is not loaded twice.
        monkeypatch.setenv(REUSE_ENV, base_url)
        prompts = write_prompts(local_root, [{"prompt": "What is 2 + 2?"}])
        ref = generate_answers(prompts, models=[{"name": "smollm2", "model": "smollm2", "base_url": "local"}],
                               max_tokens=6, artifact_root=local_root)
        df = load_table(ref, ArtifactStore(local_root))
        assert len(df) == 1 and df["error"].isna().all()
        assert df["answer"].iloc[0].strip() and 0 < df["output_tokens"].iloc[0] <= 6


def test_local_server_start_failure_is_reported_with_its_log(monkeypatch):
    monkeypatch.delenv(REUSE_ENV, raising=False)
    # A bad argument makes the subprocess exit at once: no model is loaded.
    with pytest.raises(RuntimeError, match=r"exited with code 2 while starting(.|\n)*invalid choice"):
        with local_llm_server(extra_args=["--dtype", "float64"]):
            pass
