"""Benchmark loaders: the bundled RouteLLM copy, and a small raw release built here.

The small release uses other model names and its own subject files, so the tests check
that nothing depends on the gpt-4/Mixtral pair or on a fixed set of MMLU subjects.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.prompts import prompt_id
from router_tasks.data import routellm as bm
from router_tasks.data import routellm_files as rf

REPO = Path(__file__).resolve().parents[2]
BIG, SMALL = "acme/big-1", "acme/small-1"


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def release(tmp_path) -> Path:
    """A raw release in RouteLLM's layout, with a duplicate, contaminated prompts and a
    missing MT-Bench rating."""
    src = tmp_path / "release"
    hdr = ["prompt", SMALL, BIG]
    _csv(
        src / "mmlu/responses/mmlu_alpha.csv",
        hdr,
        [
            ["Q a1\nA. x\nAnswer:", "False", "True"],
            ["Q a2\nA. x\nAnswer:", "True", "True"],
            ["Q dup\nAnswer:", "False", "True"],
        ],
    )
    _csv(
        src / "mmlu/responses/mmlu_beta.csv",
        hdr,
        [
            ["Q b1\nAnswer:", "True", "False"],
            ["Q dup\nAnswer:", "False", "True"],  # same question in another file
            ["Q leaked\nAnswer:", "True", "True"],
        ],
    )
    _jsonl(src / "mmlu/contaminated_prompts.jsonl", [{"eval_prompt": "Q leaked\nAnswer:", "train_prompt": "q leaked?"}])
    _csv(
        src / "gsm8k/gsm8k_responses.csv",
        hdr + [f"{SMALL}_response", f"{BIG}_response"],
        [
            ["How many? 1+1", "True", "True", "long text", "long text"],
            ["How many?  2+2", "False", "True", "long text", "long text"],  # extra space vs test.jsonl
            ["Leaked sum", "False", "False", "x", "y"],
        ],
    )
    _jsonl(
        src / "gsm8k/test.jsonl",
        [
            {"question": "How many? 1+1", "answer": "1+1=2\n#### 2"},
            {"question": "How many? 2+2", "answer": "so\n#### 1,004"},
            {"question": "Leaked sum", "answer": "#### -3"},
        ],
    )
    _jsonl(src / "gsm8k/train.jsonl", [{"question": "Train q", "answer": "work\n#### 12"}])
    _jsonl(src / "gsm8k/contaminated_prompts.jsonl", [{"eval_prompt": "Leaked sum", "train_prompt": "x"}])
    _jsonl(
        src / "mt_bench/question.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
            {"question_id": 2, "category": "math", "turns": ["Solve x+1=2.", "And x+2=4?"], "reference": ["1", "2"]},
            {"question_id": 3, "category": "coding", "turns": ["Code it.", "Faster."]},
            {"question_id": 4, "category": "writing", "turns": ["Contaminated first.", "More."]},
        ],
    )
    judg = []
    for q, scores in {1: (9, 7, 8, 4), 2: (10, 10, 2, 6), 3: (8, -1, 5, 5), 4: (1, 1, 1, 1)}.items():
        for (model, turn), s in zip([(BIG, 1), (BIG, 2), (SMALL, 1), (SMALL, 2)], scores, strict=False):
            judg.append({"question_id": q, "model": model, "turn": turn, "score": s, "judgment": "long"})
    _jsonl(src / "mt_bench/judgements.jsonl", judg)
    _jsonl(src / "mt_bench/contaminated_prompts.jsonl", [{"eval_prompt": "Contaminated first.", "train_prompt": "c"}])
    _jsonl(src / "commercial_routers/martian.jsonl", [{"question_id": q, "model_id": "router"} for q in (1, 2, 3, 4)])
    _jsonl(
        src / "commercial_routers/unify.jsonl",
        [
            {"question_id": 1, "model_id": "big-1@vendor"},
            {"question_id": 2, "model_id": "small-1@other"},
            {"question_id": 3, "model_id": "small-1@other"},
            {"question_id": 4, "model_id": "big-1@vendor"},
        ],
    )
    cj = []
    for router, scores in {"martian": [8, 6, 7, 5, 9, 9, 1, 1], "unify": [9, 9, -1, 7, 6, 6, 2, 2]}.items():
        for i, (q, turn) in enumerate([(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2)]):
            cj.append({"question_id": q, "model": router, "turn": turn, "score": scores[i]})
    _jsonl(src / "commercial_routers/gpt-4_single.jsonl", cj)
    (src / "LICENSE").write_text("Apache License 2.0 (test copy)\n")
    return src


# -- the holdout split -----------------------------------------------------------------
def test_holdout_is_deterministic_and_about_a_fifth():
    ids = [prompt_id(f"prompt {i}") for i in range(20000)]
    share = np.mean([bm.is_eval_holdout(p) for p in ids])
    assert 0.19 < share < 0.21
    assert [bm.is_eval_holdout(p) for p in ids[:50]] == [bm.is_eval_holdout(p) for p in ids[:50]]
    # pinned: changing the rule silently would move prompts between training and evaluation
    assert [bm.is_eval_holdout(p) for p in ids[:12]] == [_pinned(p) for p in ids[:12]]


def _pinned(pid: str) -> bool:
    import hashlib

    return int(hashlib.sha256(f"tela-eval-holdout-v1:{pid}".encode()).hexdigest()[:16], 16) < 0.2 * 2**64


# -- a raw release, any model pair, any subject files ----------------------------------
def test_raw_release_mmlu_any_pair_dedup_and_decontamination(release):
    df = bm.load_benchmark("mmlu", BIG, SMALL, data=release)
    assert list(df.columns[:4]) == ["prompt_id", "prompt", "strong_quality", "weak_quality"]
    assert list(df["prompt"]) == ["Q a1\nA. x\nAnswer:", "Q a2\nA. x\nAnswer:", "Q dup\nAnswer:", "Q b1\nAnswer:"]
    assert list(df["strong_quality"]) == [1, 1, 1, 0] and list(df["weak_quality"]) == [0, 1, 0, 1]
    assert list(df["category"]) == ["alpha", "alpha", "alpha", "beta"]
    assert df["prompt_id"].is_unique
    full = bm.load_benchmark("mmlu", BIG, SMALL, data=release, decontaminate=False)
    assert "Q leaked\nAnswer:" in set(full["prompt"])
    # the pair can be flipped: nothing assumes which model is "strong"
    flipped = bm.load_benchmark("mmlu", SMALL, BIG, data=release)
    assert list(flipped["strong_quality"]) == list(df["weak_quality"])


def test_more_subject_files_are_picked_up(release):
    before = len(bm.load_benchmark("mmlu", BIG, SMALL, data=release))
    extra = release.parent / "release2"
    import shutil

    shutil.copytree(release, extra)
    _csv(extra / "mmlu/responses/mmlu_gamma.csv", ["prompt", BIG, SMALL], [["Q g1\nAnswer:", "True", "False"]])
    df = bm.load_benchmark("mmlu", BIG, SMALL, data=extra)
    assert len(df) == before + 1 and df["category"].iloc[-1] == "gamma"


def test_unknown_model_or_benchmark_is_named(release):
    with pytest.raises(KeyError, match="no results for model 'nope'.*acme/big-1"):
        bm.load_benchmark("gsm8k", "nope", SMALL, data=release)
    with pytest.raises(KeyError, match="unknown benchmark 'arena'"):
        bm.load_benchmark("arena", BIG, SMALL, data=release)
    with pytest.raises(ValueError, match="same"):
        bm.load_benchmark("mmlu", BIG, BIG, data=release)


def test_gsm8k_gold_and_train_questions(release):
    df = bm.load_benchmark("gsm8k", BIG, SMALL, data=release)
    assert len(df) == 2  # "Leaked sum" decontaminated
    test = bm.gsm8k_test_questions(data=release)
    # matched on normalised text despite the doubled space; thousands separator dropped
    assert list(test["gold_answer"]) == ["2", "1004"]
    train = bm.gsm8k_train_questions(data=release)
    assert train.to_dict("records") == [{"prompt_id": prompt_id("Train q"), "question": "Train q", "gold_answer": "12"}]
    assert rf.gold_number("a\n#### -1,250.5") == "-1250.5"
    with pytest.raises(ValueError, match="####"):
        rf.gold_number("no final answer")


def test_mt_bench_mean_of_turns_first_turn_prompt_missing_rating_dropped(release):
    df = bm.load_benchmark("mt-bench", BIG, SMALL, data=release)
    # q3 lacks BIG's turn-2 rating (-1): dropped; q4 contaminated: dropped
    assert list(df["prompt"]) == ["Write a poem.", "Solve x+1=2."]
    assert list(df["strong_quality"]) == [8.0, 10.0] and list(df["weak_quality"]) == [6.0, 4.0]
    assert list(df["prompt_id"]) == [prompt_id("Write a poem."), prompt_id("Solve x+1=2.")]
    q = bm.mt_bench_questions(data=release)
    assert list(q["question_id"]) == [1, 2, 3]
    assert list(q.loc[q["question_id"] == 2, "reference"].iloc[0]) == ["1", "2"]
    assert bm.get_benchmark("mt-bench", release).protocol == "transfer"


def test_commercial_points(release):
    pts = bm.commercial_router_points(strong_model=BIG, weak_model=SMALL, decontaminate=False, data=release).set_index(
        "router"
    )
    assert pts.loc["martian", "score"] == pytest.approx(np.mean([8, 6, 7, 5, 9, 9, 1, 1]))
    assert pts.loc["unify", "score"] == pytest.approx(np.mean([9, 9, 7, 6, 6, 2, 2]))  # -1 left out
    assert pts.loc["unify", "n_judgements"] == 7
    assert pts.loc["unify", "strong_share"] == pytest.approx(0.5)
    assert np.isnan(pts.loc["martian", "strong_share"])  # it only says "router"
    dec = bm.commercial_router_points(strong_model=BIG, weak_model=SMALL, data=release).set_index("router")
    assert dec.loc["unify", "strong_share"] == pytest.approx(1 / 3) and dec.loc["unify", "n_questions"] == 3


def test_training_labels_schema_and_no_holdout(release):
    labels = bm.routellm_training_labels(data=release)
    assert list(labels.columns) == [
        "prompt_id",
        "prompt",
        "model",
        "score",
        "correct",
        "quality",
        "source",
        "benchmark",
    ]
    assert str(labels["score"].dtype) == "Int64" and labels["score"].isna().all()
    assert str(labels["correct"].dtype) == "boolean"
    assert (labels["quality"] == labels["correct"].astype(float)).all()
    assert not labels["prompt_id"].map(bm.is_eval_holdout).any()
    assert not labels["prompt"].isin(["Q leaked\nAnswer:", "Leaked sum"]).any()
    assert set(labels["source"]) <= {"routellm:mmlu", "routellm:gsm8k"}
    assert not labels.duplicated(["prompt_id", "model"]).any()
    # train + eval splits partition the decontaminated prompts
    every = bm.load_benchmark("mmlu", BIG, SMALL, data=release)
    train = bm.load_benchmark("mmlu", BIG, SMALL, data=release, split="train")
    held = bm.load_benchmark("mmlu", BIG, SMALL, data=release, split="eval")
    assert len(train) + len(held) == len(every) and not set(train["prompt_id"]) & set(held["prompt_id"])
    assert set(labels.loc[labels["benchmark"] == "mmlu", "prompt_id"]) == set(train["prompt_id"])
    only_big = bm.routellm_training_labels([BIG], data=release)
    assert set(only_big["model"]) == {BIG}
    with pytest.raises(KeyError, match="no results for"):
        bm.routellm_training_labels(["gpt-5"], data=release)


def test_build_script_compact_copy_reads_like_the_raw_release(release, tmp_path):
    out = tmp_path / "compact"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_routellm_data.py"), "--source", str(release), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert (out / "LICENSE").read_text() == (release / "LICENSE").read_text()
    assert "arXiv:2406.18665" in (out / "SOURCE.md").read_text()
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {f"{t}.parquet" for t in rf.TABLES}
    for name in bm.BENCHMARKS:
        pd.testing.assert_frame_equal(
            bm.load_benchmark(name, BIG, SMALL, data=out), bm.load_benchmark(name, BIG, SMALL, data=release)
        )
    # response texts are not carried over
    gp = pd.read_parquet(out / "gsm8k_prompts.parquet")
    assert not any(c.endswith("_response") for c in gp.columns)
    assert bm.data_fingerprint(out) != bm.data_fingerprint(release)


# -- the bundled copy -------------------------------------------------------------------
def test_bundled_copy_is_small_and_licensed():
    files = list(rf.BUNDLED_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 5_000_000
    assert "Apache License" in (rf.BUNDLED_DIR / "LICENSE").read_text()
    assert "lm-sys/RouteLLM" in (rf.BUNDLED_DIR / "SOURCE.md").read_text()


def test_bundled_benchmarks_match_the_release_notes():
    t = bm.load_tables()
    mt = bm.load_benchmark("mt-bench")
    assert len(mt) == 72  # 80 questions, 8 contaminated
    g = bm.load_benchmark("gsm8k")
    assert len(g) == len(t["gsm8k_prompts"]) - 12
    mm = bm.load_benchmark("mmlu")
    assert not mm["prompt"].isin(t["contaminated"]["eval_prompt"]).any()
    assert mm["prompt_id"].is_unique and mm["strong_quality"].mean() > mm["weak_quality"].mean()
    # figures the README gives for all 80 questions
    full = bm.commercial_router_points(decontaminate=False).set_index("router")
    assert full.loc["martian", "score"] == pytest.approx(8.3125, abs=1e-4)
    assert full.loc["unify", "score"] == pytest.approx(8.7579, abs=1e-4)
    assert full.loc["unify", "strong_share"] == pytest.approx(0.5)
    mt_all = bm.load_benchmark("mt-bench", decontaminate=False)
    assert mt_all["strong_quality"].mean() == pytest.approx(9.23, abs=0.01)
    assert mt_all["weak_quality"].mean() == pytest.approx(8.34, abs=0.01)
    assert bm.gsm8k_train_questions()["gold_answer"].str.fullmatch(r"-?\d+(\.\d+)?").all()
