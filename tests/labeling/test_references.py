"""References stage: the strong model writes the missing references, over real HTTP."""

from __future__ import annotations

import pandas as pd

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import judge_answers
from router_tasks.labeling.references import REFERENCE_SYSTEM, generate_references
from tests.openai_test_server import Reply, ScriptedOpenAIServer, last_user_text, write_prompts

ROWS = [
    {"prompt": "Why is the sea salty?", "reference_answer": "Dissolved minerals from rocks."},  # has one
    {"prompt": "What is 3 + 4?", "gold_answer": "7", "gold_type": "number"},  # gold: no reference needed
    {"prompt": "Name a noble gas."},  # needs one
    {"prompt": "Explain photosynthesis."},  # needs one
    {"prompt": "A question the strong model fails on."},  # needs one; the call fails
    {"prompt": "A question whose reference runs too long."},  # needs one; cut off by max_tokens
]


def strong_rule(body):
    text = last_user_text(body)
    if "fails" in text:
        return Reply(status=500, error_message="strong model down")
    if "too long" in text:
        return Reply(content="It begins, and then", finish_reason="length")
    return f"REFERENCE for: {text}"


def test_missing_references_are_written_by_the_strong_model_and_judged(local_root):
    store = ArtifactStore(local_root)
    prompts = write_prompts(local_root, ROWS)
    with ScriptedOpenAIServer(strong_rule) as strong:
        endpoint = {"name": "gpt-strong", "model": "strong-v1", "base_url": strong.base_url, "max_retries": 0}
        ref = generate_references(prompts, reference=endpoint, artifact_root=local_root, max_failure_rate=1.0)
        assert ref["key"] != prompts["key"] and strong.count() == 4  # only the four that lack both
        assert all(b["messages"][0] == {"role": "system", "content": REFERENCE_SYSTEM} for b in strong.requests)
        assert {b["max_tokens"] for b in strong.requests} == {512}
        # the failed reference is never frozen: a re-run asks it (and only it) again
        generate_references(prompts, reference=endpoint, artifact_root=local_root, max_failure_rate=1.0)
        assert strong.count() == 5 and "fails" in strong.user_texts()[4]

    df = load_table(ref, store).set_index("prompt")
    assert df.loc["Why is the sea salty?", "reference_source"] == "data"
    assert df.loc["Why is the sea salty?", "reference_answer"] == "Dissolved minerals from rocks."
    assert pd.isna(df.loc["What is 3 + 4?", "reference_answer"]) and pd.isna(
        df.loc["What is 3 + 4?", "reference_source"]
    )
    assert df.loc["Name a noble gas.", "reference_answer"] == "REFERENCE for: Name a noble gas."
    assert df.loc["Name a noble gas.", "reference_source"] == "gpt-strong"
    for failed in ("A question the strong model fails on.", "A question whose reference runs too long."):
        assert pd.isna(df.loc[failed, "reference_answer"]) and pd.isna(df.loc[failed, "reference_source"])
    stats = read_manifest(store, ref)["stats"]
    assert stats["needed"] == 4 and stats["written"] == 2 and stats["failures"] == 1 and stats["cut_off"] == 1

    # The judge grades against the generated references; the failed ones stay "no reference".
    with ScriptedOpenAIServer(lambda body: "ok") as weak, ScriptedOpenAIServer(lambda body: "Fine.\n[[4]]") as judge:
        answers = generate_answers(
            prompts, models=[{"name": "weak", "model": "w", "base_url": weak.base_url}], artifact_root=local_root
        )
        judged = judge_answers(ref, answers, judge={"model": "j", "base_url": judge.base_url}, artifact_root=local_root)
        assert judge.count() == 3  # sea, noble gas, photosynthesis
        assert any("REFERENCE for: Explain photosynthesis." in t for t in judge.user_texts())
    j = load_table(judged, store)
    assert j["score"].dropna().tolist() == [4, 4, 4]
    assert j["failure_reason"].fillna("").tolist().count("no reference") == 2


def test_nothing_to_fill_or_no_endpoint_hands_the_prompts_on(local_root):
    prompts = write_prompts(local_root, ROWS[:2])
    with ScriptedOpenAIServer(strong_rule) as strong:
        assert (
            generate_references(
                prompts, reference={"model": "s", "base_url": strong.base_url}, artifact_root=local_root
            )
            == prompts
        )
        assert strong.count() == 0
    assert (
        generate_references(write_prompts(local_root, ROWS), reference=None, artifact_root=local_root)["stage"]
        == "ingest"
    )
