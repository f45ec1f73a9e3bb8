"""Verdicts read from log-probabilities, the continuation path, and panels of judges voting,
over real HTTP against the scripted OpenAI-compatible server (with and without logprobs)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling import verdicts as vd
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import judge_answers
from tests.openai_test_server import Reply, ScriptedOpenAIServer, last_user_text, write_prompts


def tok(text, probs=None):
    """A token as the client returns it, with alternatives given as probabilities."""
    probs = probs or {text: 1.0}
    return {
        "token": text,
        "logprob": math.log(probs.get(text, 1e-9)),
        "top": [[t, math.log(p)] for t, p in probs.items()],
    }


def test_distribution_is_read_right_after_the_last_open_brackets():
    tokens = [
        tok("Good"),
        tok("."),
        tok("\n"),
        tok("[["),
        tok("2", {"2": 0.5, "3": 0.25, "x": 0.25}),
        tok("]]"),
        tok(" then"),
        tok(" [["),
        tok("4", {"4": 0.6, "5": 0.2, "n": 0.2}),
        tok("]]"),
    ]
    probs = vd.distribution(tokens)
    assert probs == pytest.approx((0, 0, 0, 0.75, 0.25))  # the last [[, renormalised over the digits
    v = vd.from_reply("Good.\n[[2]] then [[4]]", tokens)
    assert (v.score, v.method, v.failure) == (4, "logprobs", None)
    assert v.expected == pytest.approx(4.25)
    # only the window around the last [[ is kept (and cached), and it reads the same
    window = vd.verdict_window(tokens)
    assert [t["token"] for t in window] == [" [[", "4", "]]"]
    assert vd.distribution(window) == probs


def test_distribution_with_merged_or_spaced_tokens():
    merged = [tok("ok "), tok("[[3", {"[[3": 0.5, "[[4": 0.3, "[[n": 0.2}), tok("]]")]
    assert vd.distribution(merged) == pytest.approx((0, 0, 0.625, 0.375, 0))
    spaced = [tok("[["), tok(" ", {" ": 0.9, " 5": 0.1}), tok("2", {"2": 0.7, "1": 0.3}), tok("]]")]
    # " 5" at once (0.1), or the space (0.9) then 1 (0.3) or 2 (0.7)
    assert vd.distribution(spaced) == pytest.approx((0.27, 0.63, 0, 0, 0.1))
    # "[[10]]" is not a 1-5 verdict; a reply with no digit after [[ has no distribution
    assert vd.distribution([tok("[["), tok("10", {"10": 1.0}), tok("]]")]) is None
    assert vd.distribution([tok("[["), tok("n"), tok("]]")]) is None
    assert vd.distribution([tok("no"), tok(" verdict")]) is None and vd.verdict_window([tok("no")]) is None


def test_reply_falls_back_to_text_and_keeps_the_failure():
    assert vd.from_reply("Fine [[5]]", None) == vd.Verdict(5, None, "text", None)
    none = vd.from_reply("three out of five", None)
    assert none.score is None and none.failure == vd.NO_VERDICT
    assert vd.continuation([{"role": "user", "content": "q"}], "Okay.\n[[n]] and more")[-1] == {
        "role": "assistant",
        "content": "Okay.\n[[",
    }
    assert vd.continuation([], "Okay.  ")[-1]["content"] == "Okay.\n[["


def test_votes():
    v = lambda s, probs=None: vd.Verdict(s, probs, "text" if probs is None else "logprobs")  # noqa: E731
    maj = vd.vote([v(4), v(4), v(1)], "majority")
    assert (maj.score, maj.judges) == (4, 3) and maj.disagreement == pytest.approx(1 / 3)
    assert maj.expected == pytest.approx(3.0)
    mean = vd.vote([v(4), v(4), v(1)], "mean")
    assert mean.score == 3 and mean.disagreement == pytest.approx(1.0)
    # a tie goes to the tied score nearest the mean expected score (2.3 and 3.15: 2.725), then the lower
    tie = vd.vote([v(2, (0.1, 0.5, 0.4, 0, 0)), v(3, (0, 0.2, 0.45, 0.35, 0))], "majority")
    assert tie.score == 3 and tie.disagreement == 0.5 and tie.expected == pytest.approx(2.725)
    assert vd.vote([v(2), v(3)], "majority").score == 2
    assert vd.vote([vd.Verdict(None, failure="x")], "majority") is None
    with pytest.raises(ValueError, match="vote must be one of"):
        vd.vote([v(3)], "median")


# --------------------------------------------------------------------------------------
# The stage over HTTP
# --------------------------------------------------------------------------------------

ROWS = [
    {"prompt": "Why is the sky blue?", "reference_answer": "Rayleigh scattering.", "dataset": "chat"},
    {"prompt": "Name a prime.", "reference_answer": "7", "dataset": "chat"},
    {"prompt": "Write a haiku about rain.", "reference_answer": "Soft rain on the roof", "dataset": "chat"},
]
ANSWERS = {ROWS[0]["prompt"]: "GOOD scattering", ROWS[1]["prompt"]: "MEH 9", ROWS[2]["prompt"]: "SHY rain"}


def _answers(root):
    prompts = write_prompts(root, ROWS)
    with ScriptedOpenAIServer(lambda body: ANSWERS[last_user_text(body)]) as srv:
        answers = generate_answers(
            prompts, artifact_root=root, models=[{"name": "cheap", "model": "cheap", "base_url": srv.base_url}]
        )
    return prompts, answers


def _answer_in(body) -> str:
    return last_user_text(body).split("[Assistant's answer]")[1]


def judge_rule(body):
    """GOOD: a sure [[5]]; MEH: [[3]], unsure between 2, 3 and 4; SHY: never writes [[n]]
    itself, but a continued turn (prefilled `[[`) gets a 4 out of 4/5."""
    if body.get("continue_final_message"):
        assert body["messages"][-1]["role"] == "assistant" and body["messages"][-1]["content"].endswith("[[")
        return Reply("4", alternatives={"4": {"4": 0.7, "5": 0.3}})
    answer = _answer_in(body)
    if "GOOD" in answer:
        return Reply("Correct.\n[[5]]", alternatives={"5": {"5": 0.9, "4": 0.1}})
    if "MEH" in answer:
        return Reply("Partly.\n[[3]]", alternatives={"3": {"3": 0.5, "2": 0.25, "4": 0.25}})
    return "I would not like to say."


def _table(root, ref):
    store = ArtifactStore(root)
    df = load_table(ref, store)
    prompts = load_table(write_prompts(root, ROWS), store).set_index("prompt_id")["prompt"]
    return df.assign(prompt=df["prompt_id"].map(prompts)).set_index("prompt"), read_manifest(store, ref)["stats"]


def test_logprob_verdicts_and_a_rerun_that_pays_nothing(local_root):
    prompts, answers = _answers(local_root)
    with ScriptedOpenAIServer(judge_rule) as srv:
        judge = {"name": "lp-judge", "model": "j", "base_url": srv.base_url, "max_retries": 0}
        ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert srv.count() == 3  # "logprobs" path (any endpoint but ours): no continuation
        assert all(b["logprobs"] is True and b["top_logprobs"] == vd.TOP_LOGPROBS for b in srv.requests)
        df, stats = _table(local_root, ref)
        good, meh, shy = (df.loc[r["prompt"]] for r in ROWS)
        assert good["score"] == 5 and good["verdict_method"] == "logprobs"
        assert json.loads(good["score_probs"]) == pytest.approx([0, 0, 0, 0.1, 0.9])
        assert good["score_expected"] == pytest.approx(4.9)
        assert meh["score"] == 3 and meh["score_expected"] == pytest.approx(3.0)
        # no [[n]] and no way to continue on this path: today's failure, text kept
        assert pd.isna(shy["score"]) and shy["failure_reason"] == vd.NO_VERDICT
        assert shy["judge_raw"] == "I would not like to say."
        assert stats["parse_failures"] == 1 and stats["verdicts_by_method"] == {"logprobs": 2}

        again = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert srv.count() == 3  # all from the cache (a reply without a verdict is still a reply)
        df2, _ = _table(local_root, again)
        assert df2.loc[ROWS[0]["prompt"], "score_probs"] == good["score_probs"]  # read back from the cache


def test_continuation_path_gives_every_answer_a_verdict(local_root):
    prompts, answers = _answers(local_root)
    with ScriptedOpenAIServer(judge_rule) as srv:
        judge = {"name": "vllm-like", "model": "j", "base_url": srv.base_url, "verdict": "continue"}
        ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert srv.count() == 4  # three replies, one continued
        cont = [b for b in srv.requests if b.get("continue_final_message")]
        assert len(cont) == 1 and cont[0]["add_generation_prompt"] is False and cont[0]["max_tokens"] == 1
        assert cont[0]["structured_outputs"] == {"choice": ["1", "2", "3", "4", "5"]}
        assert cont[0]["messages"][-1]["content"] == "I would not like to say.\n[["
        df, stats = _table(local_root, ref)
        shy = df.loc[ROWS[2]["prompt"]]
        assert shy["score"] == 4 and shy["verdict_method"] == "continuation" and pd.isna(shy["failure_reason"])
        assert shy["score_expected"] == pytest.approx(4.3)
        assert df["score"].notna().all() and stats["parse_failures"] == 0 and stats["continuations"] == 1
        judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        assert srv.count() == 4


def test_endpoint_without_logprobs_keeps_text_parsing(local_root):
    prompts, answers = _answers(local_root)
    with ScriptedOpenAIServer(judge_rule, logprobs=False) as srv:
        judge = {"name": "plain", "model": "j", "base_url": srv.base_url}
        ref = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        df, stats = _table(local_root, ref)
    assert srv.requests[0]["logprobs"] is True  # asked, but none came back
    assert df.loc[ROWS[0]["prompt"], "score"] == 5 and df.loc[ROWS[0]["prompt"], "verdict_method"] == "text"
    assert pd.isna(df.loc[ROWS[0]["prompt"], "score_probs"])
    assert df.loc[ROWS[0]["prompt"], "score_expected"] == 5.0
    assert df.loc[ROWS[2]["prompt"], "failure_reason"] == vd.NO_VERDICT
    assert stats["verdicts_by_method"] == {"text": 2}


def panel_rule(body):
    """Three judges by model id: `lenient` and `fair` read the answers alike, `harsh` gives 1."""
    answer, model = _answer_in(body), body["model"]
    if model == "harsh":
        return "Unacceptable. [[1]]"
    if "GOOD" in answer or model == "lenient":
        return "Fine. [[5]]" if "GOOD" in answer else "Fine. [[4]]"
    return "Partly. [[3]]" if "MEH" in answer else "Hm. [[4]]"


def test_majority_vote_with_a_disagreeing_judge_and_every_reply_cached(local_root):
    prompts, answers = _answers(local_root)
    with ScriptedOpenAIServer(panel_rule, logprobs=False) as srv:
        judges = [{"name": n, "model": n, "base_url": srv.base_url} for n in ("lenient", "fair", "harsh")]
        ref = judge_answers(prompts, answers, judges=judges, vote="majority", artifact_root=local_root)
        assert srv.count() == 9  # every judge, every answer
        df, stats = _table(local_root, ref)
        good, meh, shy = (df.loc[r["prompt"]] for r in ROWS)
        assert good["score"] == 5 and json.loads(good["judge_votes"]) == {"lenient": 5, "fair": 5, "harsh": 1}
        assert good["judge_disagreement"] == pytest.approx(1 / 3)
        # lenient 4, fair 3, harsh 1: a three-way tie goes to the one nearest their mean (2.67)
        assert json.loads(meh["judge_votes"]) == {"lenient": 4, "fair": 3, "harsh": 1}
        assert meh["score"] == 3 and meh["judge_disagreement"] == pytest.approx(2 / 3)
        assert shy["score"] == 4 and shy["judge_disagreement"] == pytest.approx(1 / 3)
        assert good["judge_model"] == "majority(lenient, fair, harsh)"
        assert set(stats["by_judge"]) == {"lenient", "fair", "harsh"}
        assert set(stats["ledger"]) == {"lenient", "fair", "harsh"}

        mean = judge_answers(prompts, answers, judges=judges, vote="mean", artifact_root=local_root)
        assert srv.count() == 9  # another vote over the same replies: nothing asked again
        dfm, _ = _table(local_root, mean)
        assert dfm.loc[ROWS[0]["prompt"], "score"] == 4  # (5 + 5 + 1) / 3 = 3.67, rounded
        assert dfm.loc[ROWS[0]["prompt"], "score_expected"] == pytest.approx(11 / 3, abs=1e-4)
        # one judge more: only it is asked
        more = judges + [{"name": "fair2", "model": "fair2", "base_url": srv.base_url}]
        judge_answers(prompts, answers, judges=more, artifact_root=local_root)
        assert srv.count() == 12 and srv.count("fair2") == 3


def test_panel_config_is_checked_before_any_call(local_root):
    prompts, answers = _answers(local_root)
    with pytest.raises(ValueError, match="vote must be one of"):
        judge_answers(
            prompts,
            answers,
            judges=[{"model": "a", "base_url": "http://127.0.0.1:9/v1"}],
            vote="median",
            artifact_root=local_root,
        )
    with pytest.raises(ValueError, match="names must be unique"):
        judge_answers(
            prompts, answers, judges=[{"model": "a", "base_url": "http://127.0.0.1:9/v1"}] * 2, artifact_root=local_root
        )
    with pytest.raises(ValueError, match=r"judges\[0\].*verdict must be one of"):
        judge_answers(
            prompts,
            answers,
            judges=[{"model": "a", "base_url": "http://127.0.0.1:9/v1", "verdict": "x"}],
            artifact_root=local_root,
        )
