"""Judge stage: exact-match parsing on GSM8K/MMLU-shaped answers, and the reference-guided
LLM judge over real HTTP against the scripted OpenAI-compatible test server."""

from __future__ import annotations

import csv
import json
import os
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import (
    JUDGEMENT_COLUMNS,
    extract_letter,
    extract_number,
    grade_exact,
    judge_answers,
    normalize_number,
    numbers_equal,
    parse_verdict,
    plan_judging,
)
from router_tasks.labeling.rubric import RUBRIC_VERSION
from tests.openai_test_server import FAST_RETRY, Reply, ScriptedOpenAIServer, last_user_text, write_prompts

REPO = Path(__file__).resolve().parents[2]


def _routellm_dir() -> Path | None:
    """RouteLLM's full release (answer texts) beside the repo: `../shared/benchmarks/routellm`
    (for a git worktree one level further up), or TELA_ROUTELLM_DIR."""
    if os.environ.get("TELA_ROUTELLM_DIR"):
        return Path(os.environ["TELA_ROUTELLM_DIR"])
    for up in (REPO.parent, REPO.parent.parent):
        if (up / "shared" / "benchmarks" / "routellm").is_dir():
            return up / "shared" / "benchmarks" / "routellm"
    return None


ROUTELLM = _routellm_dir()

MMLU_PROMPT = """A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral
A. paralysis of the facial muscles.
B. paralysis of the facial muscles and loss of taste.
C. paralysis of the facial muscles, loss of taste and lacrimation.
D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.
Answer:"""


@pytest.mark.parametrize(
    "answer, expected",
    [
        (
            (
                "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
            ),
            "18",
        ),
        ("So he made a profit of 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000", "70000"),
        ("The profit is $155,000 - $130,000 = $25,000.", "25000"),  # no ####: the last number
        ("#### $20.00", "20"),
        ("The answer is \\boxed{42}. Check: 6 * 7 = 42 apples in 3 baskets", "42"),  # boxed beats the last number
        ("He ends up with -5 degrees.", "-5"),
        ("0.5 pounds per day.\n#### 0.5\n\n", "0.5"),
        ("16 - 3 = 13", "13"),  # a minus between numbers is not a sign
        ("I am not sure.", None),
    ],
)
def test_extract_number_from_gsm8k_shaped_answers(answer, expected):
    got = extract_number(answer)
    assert (got is None) if expected is None else numbers_equal(got, Decimal(expected))


def test_number_normalisation():
    assert normalize_number("$1,234.50") == Decimal("1234.50")
    assert numbers_equal(normalize_number("18.00"), normalize_number("18"))
    assert not numbers_equal(normalize_number("18"), normalize_number("180"))
    assert normalize_number("none") is None


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("B", "B"),
        ("(C)", "C"),
        ("d", "D"),
        ("B. paralysis of the facial muscles and loss of taste.", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("I think the correct answer is **A** because the nerve exits there.", "A"),
        ("Option B fits, but after more thought I choose C.", "C"),  # the last statement wins
        ("paralysis of the facial muscles, loss of taste and lacrimation", "C"),  # choice text, via the prompt
        ("A lesion there is serious.", None),  # "A" is the article here
        ("I'd like to choose a good answer but cannot.", None),
        ("", None),
    ],
)
def test_extract_letter_from_mmlu_shaped_answers(answer, expected):
    assert extract_letter(answer, MMLU_PROMPT) == expected


def test_grade_exact_reports_bad_gold_instead_of_guessing():
    assert grade_exact("#### 5", "5", "number") == (True, "5", None)
    assert grade_exact("The answer is B", "B", "letter") == (True, "B", None)
    assert grade_exact("no idea", "7", "number") == (False, None, None)  # no number: wrong, not a failure
    assert grade_exact("#### 5", "five", "number")[2] == "gold answer 'five' is not a number"
    assert grade_exact("B", "Z", "letter")[2] == "gold answer 'Z' is not a letter A-D"
    assert "unsupported gold_type 'text'" in grade_exact("x", "y", "text")[2]


def test_number_grader_agrees_with_routellm_gsm8k_labels():
    """Our grader on 2,638 real GPT-4 / Mixtral answers vs RouteLLM's own correctness labels.

    Fails, never skips, when the data is missing: a skipped check reads as a passed one."""
    assert ROUTELLM is not None and (ROUTELLM / "gsm8k" / "gsm8k_responses.csv").is_file(), (
        f"RouteLLM's GSM8K responses not found beside the repo ({REPO.parent / 'shared/benchmarks/routellm'}); "
        f"put the shared benchmark folder there or set TELA_ROUTELLM_DIR"
    )
    gold = {}
    for line in (ROUTELLM / "gsm8k" / "test.jsonl").open():
        row = json.loads(line)
        gold[" ".join(row["question"].split())] = row["answer"].split("####")[-1].strip()
    agree = total = 0
    with (ROUTELLM / "gsm8k" / "gsm8k_responses.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            want = gold[" ".join(row["prompt"].split())]
            for model in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"):
                ours, _, _ = grade_exact(row[f"{model}_response"], want, "number")
                agree += ours == (row[model] == "True")
                total += 1
    assert total > 2000
    # Measured 98.0%; most differences are "$20.00" for gold 20, which RouteLLM marks wrong.
    assert agree / total >= 0.96


def test_parse_verdict():
    assert parse_verdict("Close to the reference.\n[[4]]") == 4
    assert parse_verdict("First [[2]], on reflection [[ 5 ]]") == 5
    assert parse_verdict("Rating: 4/5") is None
    assert parse_verdict("[[6]]") is None and parse_verdict("[[n]]") is None and parse_verdict(None) is None


# --------------------------------------------------------------------------------------
# The stage, end to end: generate (scripted model server) -> judge (scripted judge server)
# --------------------------------------------------------------------------------------

PROMPT_ROWS = [
    {
        "prompt": "Janet's ducks lay 16 eggs. She eats 3 and bakes with 4. Eggs sell for $2. Dollars per day?",
        "gold_answer": "18",
        "gold_type": "number",
        "dataset": "gsm8k",
    },
    {
        "prompt": "Tom has 5 apples and eats 2. How many are left?",
        "gold_answer": "3",
        "gold_type": "number",
        "dataset": "gsm8k",
    },
    {"prompt": MMLU_PROMPT, "gold_answer": "A", "gold_type": "letter", "dataset": "mmlu"},
    {
        "prompt": "Explain why the sky is blue.",
        "reference_answer": "Rayleigh scattering of sunlight.",
        "dataset": "mt-bench",
    },
    {"prompt": "Write a haiku about rain.", "reference_answer": "Soft rain on the roof / ...", "dataset": "mt-bench"},
    {
        "prompt": "Summarise the plot of Hamlet.",
        "reference_answer": "A prince avenges his father.",
        "dataset": "mt-bench",
    },
    {"prompt": "Name a prime number.", "reference_answer": "7", "dataset": "mt-bench"},
    {"prompt": "Tell me a joke.", "dataset": "chat"},  # neither gold nor reference
    {"prompt": "This one breaks the model server.", "reference_answer": "whatever", "dataset": "mt-bench"},
]

MODEL_REPLIES = {
    PROMPT_ROWS[0]["prompt"]: "16 - 3 - 4 = 9 eggs, 9 * $2 = $18.\n#### 18",
    PROMPT_ROWS[1]["prompt"]: "5 - 2 = 3... no wait, 4.",  # wrong: the last number is 4
    PROMPT_ROWS[2]["prompt"]: "The answer is (A).",
    PROMPT_ROWS[3]["prompt"]: "GOOD: sunlight scatters off air molecules.",
    PROMPT_ROWS[4]["prompt"]: "BAD: rain is wet.",
    PROMPT_ROWS[5]["prompt"]: "RAMBLING: a Danish prince thinks a lot.",
    PROMPT_ROWS[6]["prompt"]: "CRASH the judge: 7",
    PROMPT_ROWS[7]["prompt"]: "Why did the chicken cross the road?",
}


def _model_rule(body):
    text = last_user_text(body)
    if text not in MODEL_REPLIES:
        return Reply(status=500, error_message="model server down")
    return MODEL_REPLIES[text]


def _judge_rule(body):
    text = last_user_text(body)
    answer = text.split("[Assistant's answer]")[1]
    if "GOOD:" in answer:
        return "The answer matches the reference in substance.\n[[5]]"
    if "BAD:" in answer:
        return "Much worse than the reference.\n[[2]]"
    if "RAMBLING:" in answer:
        return "It is partly right, I would say a three out of five."  # no [[n]]
    return Reply(status=500, error_message="judge overloaded")


def _answers(root, prompts):
    with ScriptedOpenAIServer(_model_rule) as srv:
        return generate_answers(
            prompts,
            artifact_root=root,
            models=[{"name": "weak", "model": "weak", "base_url": srv.base_url, "max_retries": 0}],
        )


def test_judge_stage_grades_every_answer(local_root):
    prompts = write_prompts(local_root, PROMPT_ROWS)
    answers = _answers(local_root, prompts)
    store = ArtifactStore(local_root)

    with ScriptedOpenAIServer(_judge_rule) as judge_srv:
        judge = {"name": "judge-x", "model": "judge-model", "base_url": judge_srv.base_url, "max_retries": 0}
        ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        # only the four answered rows with a reference (and no gold) went to the judge
        assert judge_srv.count() == 4
        sent = judge_srv.user_texts()
        hamlet = next(t for t in sent if "Hamlet" in t)
        assert "A prince avenges his father." in hamlet and "RAMBLING: a Danish prince" in hamlet
        assert all("[[n]]" in t for t in sent)  # the rubric asks for the verdict format
        assert {b["temperature"] for b in judge_srv.requests} == {0.0}

        df = load_table(ref, store)
        assert list(df.columns) == JUDGEMENT_COLUMNS and len(df) == len(PROMPT_ROWS)
        assert str(df["score"].dtype) == "Int64" and str(df["correct"].dtype) == "boolean"
        pids = load_table(prompts, store).set_index("prompt")["prompt_id"]
        row = df.set_index("prompt_id").loc

        def get(i):
            return row[pids[PROMPT_ROWS[i]["prompt"]]]

        assert get(0)["method"] == "exact_match" and get(0)["correct"] == True  # noqa: E712
        assert get(0)["judge_raw"] == "18" and pd.isna(get(0)["score"])
        assert get(1)["correct"] == False and get(1)["judge_raw"] == "4"  # noqa: E712
        assert get(2)["correct"] == True and get(2)["judge_raw"] == "A"  # noqa: E712

        assert get(3)["method"] == "llm_judge" and get(3)["score"] == 5 and pd.isna(get(3)["failure_reason"])
        assert get(3)["judge_model"] == "judge-x" and get(3)["rubric_version"] == RUBRIC_VERSION
        assert get(4)["score"] == 2
        # no verdict: the text is kept, no score is made up
        assert pd.isna(get(5)["score"]) and get(5)["failure_reason"] == "no [[n]] verdict"
        assert "three out of five" in get(5)["judge_raw"]
        # the judge call failed: recorded, not lost
        assert pd.isna(get(6)["score"]) and get(6)["failure_reason"].startswith("judge error: HTTP 500")
        assert get(7)["failure_reason"] == "no reference" and pd.isna(get(7)["score"])
        assert get(8)["failure_reason"] == "no answer"  # generation failed for it

        stats = read_manifest(store, ref)["stats"]
        assert stats["requests"] == 4 and stats["request_errors"] == 1
        assert stats["parse_failures"] == 1 and stats["parse_failure_rate"] == pytest.approx(1 / 3, abs=1e-3)
        assert stats["no_answer"] == 1 and stats["no_reference"] == 1 and stats["exact_match"] == 3
        assert stats["by_model"]["weak"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)

        # Re-run: the failed verdict is asked again (it is never frozen), nothing else is.
        again = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert judge_srv.count() == 5
        answer = judge_srv.user_texts()[4].split("[Assistant's answer]")[1]
        assert not any(m in answer for m in ("GOOD:", "BAD:", "RAMBLING:"))  # the one that had failed
        assert read_manifest(store, again)["stats"]["requests"] == 1


def test_judge_without_endpoint_marks_reference_rows(local_root):
    prompts = write_prompts(local_root, PROMPT_ROWS[:5])
    answers = _answers(local_root, prompts)
    ref = judge_answers(prompts, answers, judge=None, artifact_root=local_root)
    df = load_table(ref, ArtifactStore(local_root))
    assert df["failure_reason"].fillna("").tolist().count("no judge configured") == 2
    assert df["correct"].notna().sum() == 3  # exact match needs no judge


def test_judge_rejects_answers_for_unknown_prompts(local_root):
    prompts = write_prompts(local_root, PROMPT_ROWS[:2])
    answers = _answers(local_root, write_prompts(local_root, PROMPT_ROWS[2:4]))
    with pytest.raises(ValueError, match="not in the prompts table"):
        judge_answers(prompts, answers, judge=None, artifact_root=local_root)


def test_failing_judge_aborts_and_rerun_asks_only_unjudged_rows(local_root):
    prompts = write_prompts(local_root, PROMPT_ROWS[3:7])  # four reference rows
    answers = _answers(local_root, prompts)
    broken = {"BAD:", "RAMBLING:", "CRASH"}

    def rule(body):
        answer = last_user_text(body).split("[Assistant's answer]")[1]
        if any(b in answer for b in broken):
            return Reply(status=500, headers=FAST_RETRY)
        return "Fine.\n[[4]]"

    with ScriptedOpenAIServer(rule) as srv:
        judge = {"model": "j", "base_url": srv.base_url, "max_retries": 1}
        with pytest.raises(RuntimeError, match=r"3/4 calls to judge 'j' failed"):
            judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert srv.count() == 1 + 3 * 2  # each failing call retried once by the client

        broken.clear()  # the judge recovers
        ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert srv.count() == 7 + 3  # the verdict already received was not asked for again
    df = load_table(ref, ArtifactStore(local_root))
    assert df["score"].tolist() == [4, 4, 4, 4]
    stats = read_manifest(ArtifactStore(local_root), ref)["stats"]
    assert stats["cached"] == 1 and stats["requests"] == 3


def test_judge_parts_per_shard_join_into_one_table(local_root):
    rows = [dict(r, shard=i % 2) for i, r in enumerate(PROMPT_ROWS)]
    prompts = write_prompts(local_root, rows)
    answers = _answers(local_root, prompts)
    store = ArtifactStore(local_root)
    with ScriptedOpenAIServer(_judge_rule) as judge_srv:
        judge = {"name": "judge-x", "model": "judge-model", "base_url": judge_srv.base_url, "max_retries": 0}
        assert plan_judging(prompts, artifact_root=local_root) == [{"shard": 0}, {"shard": 1}]
        ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert judge_srv.count() == 4  # each judged row once, whichever part it fell in
    stats = read_manifest(store, ref)["stats"]
    assert stats["parts"] == 2 and stats["llm_judge"] == 4 and stats["exact_match"] == 3
    df = load_table(ref, store)
    assert len(df) == len(PROMPT_ROWS) and df["prompt_id"].is_unique
