"""Judge agreement with exact match on a seeded sample of gold-graded answers: figures known
by construction, the sample's seed, the data-quality rule that stops a run, and the report
travelling into the labels and validate artifacts."""

from __future__ import annotations

import json
import re

import pytest

from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.data.labels import AGREEMENT_FILE, build_labels
from router_tasks.data.quality import DataQualityError
from router_tasks.data.validate import validate_labels
from router_tasks.labeling.agreement import REPORT_FILE, agreement_markdown, measure_judge_agreement, sample_rows
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import judge_answers
from tests.openai_test_server import ScriptedOpenAIServer, last_user_text, write_prompts

N = 12
# k = 0..11: "what is k + k?", gold 2k; the model is right for k < 6 and off by one after.
ROWS = [
    {
        "prompt": f"Tom has {k} apples and buys {k} more. How many apples now?",
        "gold_answer": str(2 * k),
        "gold_type": "number",
        "dataset": "sums",
    }
    for k in range(N)
]
ROWS.append({"prompt": "Describe rain.", "reference_answer": "Water falling from clouds.", "dataset": "chat"})
# The judge's mistakes, by k: a right answer it calls poor, and two wrong ones it calls good.
JUDGE_WRONG_ON = {0: "[[2]]", 6: "[[4]]", 7: "[[5]]"}


def _k(text: str) -> int:
    return int(re.search(r"has (\d+) apples", text).group(1))


def model_rule(body):
    text = last_user_text(body)
    if text == "Describe rain.":
        return "Rain is water."
    k = _k(text)
    return f"{k} + {k} = {2 * k if k < 6 else 2 * k + 1}\n#### {2 * k if k < 6 else 2 * k + 1}"


def judge_rule(body):
    text = last_user_text(body)
    question = text.split("[Reference answer]")[0]
    if "Describe rain" in question:
        return "Fine. [[4]]"
    gold = re.search(r"The correct final answer is (\d+)\.", text).group(1)
    answer = text.split("[Assistant's answer]")[1]
    k = _k(question)
    if k in JUDGE_WRONG_ON:
        return "Hm. " + JUDGE_WRONG_ON[k]
    return "Matches. [[5]]" if f"#### {gold}" in answer else "Wrong result. [[1]]"


@pytest.fixture
def run(local_root):
    prompts = write_prompts(local_root, ROWS)
    with ScriptedOpenAIServer(model_rule) as srv:
        answers = generate_answers(
            prompts, artifact_root=local_root, models=[{"name": "cheap", "model": "cheap", "base_url": srv.base_url}]
        )
    with ScriptedOpenAIServer(judge_rule) as judge_srv:
        judge = {"name": "j", "model": "j", "base_url": judge_srv.base_url}
        judged = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        yield {
            "prompts": prompts,
            "answers": answers,
            "judged": judged,
            "judge": judge,
            "srv": judge_srv,
            "root": local_root,
        }


def test_agreement_figures_on_a_sample_whose_agreement_is_known(run):
    store = ArtifactStore(run["root"])
    calls = run["srv"].count()
    ref = measure_judge_agreement(
        run["prompts"], run["answers"], run["judged"], judge=run["judge"], sample_size=50, artifact_root=run["root"]
    )
    assert run["srv"].count() == calls + N  # every gold-graded answer, once
    sent = run["srv"].user_texts()[-N:]
    assert all("The correct final answer is" in t and "[Assistant's answer]" in t for t in sent)
    report = json.loads(store.read_bytes(f"{ref['key']}/{REPORT_FILE}"))
    # 6 right answers (judged correct but k=0) and 6 wrong ones (judged correct at k=6, 7):
    # agreement 9/12; kappa (0.75 - pe) / (1 - pe), pe = 7/12 * 6/12 + 5/12 * 6/12 = 0.5
    assert (report["eligible_rows"], report["sampled"], report["n"]) == (N, N, N)
    assert report["accuracy"] == pytest.approx(0.75) and report["kappa"] == pytest.approx(0.5)
    assert report["confusion"] == {
        "exact_correct": {"1": 0, "2": 1, "3": 0, "4": 0, "5": 5},
        "exact_incorrect": {"1": 4, "2": 0, "3": 0, "4": 1, "5": 1},
    }
    assert report["binary"]["judge_correct_exact_incorrect"] == 2
    assert report["by_model"]["cheap"]["exact_match_rate"] == 0.5
    assert report["by_model"]["cheap"]["judge_correct_rate"] == pytest.approx(7 / 12, abs=1e-4)
    # expected scores: right answers 5,5,5,5,5,2 vs wrong 1,1,1,1,4,5: AUC = (5*6 - 2 + ... ) counted by hand
    pairs = [(a, b) for a in (5, 5, 5, 5, 5, 2) for b in (1, 1, 1, 1, 4, 5)]
    auc = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert report["auc_expected_score"] == pytest.approx(auc, abs=1e-4)
    table = load_table(ref, store)
    assert len(table) == N and table["judge_correct"].sum() == 7
    stats = read_manifest(store, ref)["stats"]
    assert stats["agreement"]["accuracy"] == pytest.approx(0.75) and set(stats["ledger"]) == {"j"}
    text = "\n".join(agreement_markdown(report))
    assert "accuracy 0.750" in text and "kappa 0.500" in text and "| correct | 0 | 1 | 0 | 0 | 5 |" in text

    # the labels and validate artifacts carry it; a re-run asks nothing
    labels = build_labels(run["prompts"], run["judged"], ref, include_routellm=False, artifact_root=run["root"])
    assert read_manifest(store, labels)["stats"]["judge_agreement"]["kappa"] == pytest.approx(0.5)
    assert json.loads(store.read_bytes(f"{labels['key']}/{AGREEMENT_FILE}")) == report
    valid = validate_labels(labels, min_rows_per_model=1, artifact_root=run["root"])
    assert read_manifest(store, valid)["stats"]["judge_agreement"]["accuracy"] == pytest.approx(0.75)
    assert store.exists(f"{valid['key']}/{AGREEMENT_FILE}")
    measure_judge_agreement(
        run["prompts"],
        run["answers"],
        run["judged"],
        judge=run["judge"],
        sample_size=50,
        seed=0,
        thresholds={"min_agreement_rows": 11},
        artifact_root=run["root"],
    )
    assert run["srv"].count() == calls + N


def test_sample_is_seeded_and_nested(run):
    judged = load_table(run["judged"], ArtifactStore(run["root"]))
    five, eligible = sample_rows(judged, 5, seed=0)
    assert eligible == N and len(five) == 5
    assert five.equals(sample_rows(judged, 5, seed=0)[0])  # the same rows every time
    eight = sample_rows(judged, 8, seed=0)[0]
    assert set(five["prompt_id"]) < set(eight["prompt_id"])  # a larger sample holds the smaller one
    assert set(sample_rows(judged, 5, seed=1)[0]["prompt_id"]) != set(five["prompt_id"])
    assert (five["method"] == "exact_match").all()


def test_low_agreement_stops_the_run_with_the_figures(run):
    store = ArtifactStore(run["root"])
    with pytest.raises(DataQualityError, match=r"judge_agreement_at_least.*observed=0\.75") as err:
        measure_judge_agreement(
            run["prompts"],
            run["answers"],
            run["judged"],
            judge=run["judge"],
            sample_size=50,
            min_agreement=0.8,
            artifact_root=run["root"],
        )
    assert err.value.failures[0]["kwargs"]["min_value"] == 0.8
    assert json.loads(store.read_bytes(err.value.data_docs.split(store.root.rstrip("/") + "/", 1)[-1]))["n"] == N
    with pytest.raises(DataQualityError, match="judge_kappa_at_least"):
        measure_judge_agreement(
            run["prompts"],
            run["answers"],
            run["judged"],
            judge=run["judge"],
            sample_size=50,
            thresholds={"min_judge_kappa": 0.6},
            artifact_root=run["root"],
        )
    # too few rows to judge the judge by: no stop
    ok = measure_judge_agreement(
        run["prompts"],
        run["answers"],
        run["judged"],
        judge=run["judge"],
        sample_size=5,
        min_agreement=0.99,
        artifact_root=run["root"],
    )
    assert read_manifest(store, ok)["stats"]["agreement"]["n"] == 5


def test_a_run_without_gold_answers_says_why(local_root):
    rows = [ROWS[-1]]
    prompts = write_prompts(local_root, rows)
    with ScriptedOpenAIServer(model_rule) as srv:
        answers = generate_answers(
            prompts, artifact_root=local_root, models=[{"name": "cheap", "model": "cheap", "base_url": srv.base_url}]
        )
    with ScriptedOpenAIServer(judge_rule) as judge_srv:
        judge = {"name": "j", "model": "j", "base_url": judge_srv.base_url}
        judged = judge_answers(prompts, answers, judge=judge, artifact_root=local_root)
        ref = measure_judge_agreement(prompts, answers, judged, judge=judge, artifact_root=local_root)
        assert judge_srv.count() == 1
    report = json.loads(ArtifactStore(local_root).read_bytes(f"{ref['key']}/{REPORT_FILE}"))
    assert report["n"] == 0 and "no gold answers" in report["skipped"]
    assert "not measured" in agreement_markdown(report)[0]
