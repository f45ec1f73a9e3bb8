"""Batch mode gives the same labels as online mode, through the Batch API of a real HTTP server."""

from __future__ import annotations

import pandas as pd
import pytest

from router_tasks.core.stage import load_table
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.generate import generate_answers
from router_tasks.labeling.judge import judge_answers
from router_tasks.labeling.judge_batch import batch_lines, collect_judge_batch, run_judge_batch
from router_tasks.labeling.ledger import cost_ledger
from tests.openai_test_server import ScriptedOpenAIServer, last_user_text, write_prompts

ROWS = [{"prompt": f"Question {i}?", "reference_answer": f"Answer {i}."} for i in range(8)] + [
    {"prompt": "What is 2 + 2?", "gold_answer": "4", "gold_type": "number"}
]


def judge_rule(body):
    text = last_user_text(body)
    answer = text.split("[Assistant's answer]")[1]
    n = sum(map(ord, answer)) % 5 + 1  # deterministic per answer, varied across rows
    if "Question 3?" in text:
        return f"Hard to say; about {n} out of 5."  # no [[n]]: kept as a parse failure either way
    return f"Reasoning about the answer.\n[[{n}]]"


def _labels_both_ways(tmp_path, srv_model):
    tables, servers = {}, {}
    for mode in ("online", "batch"):
        root = str(tmp_path / mode)
        prompts = write_prompts(root, ROWS)
        answers = generate_answers(
            prompts,
            models=[
                {"name": "a", "model": "a", "base_url": srv_model.base_url},
                {"name": "b", "model": "b", "base_url": srv_model.base_url},
            ],
            artifact_root=root,
        )
        with ScriptedOpenAIServer(judge_rule, batch_polls=2) as judge_srv:
            judge = {
                "name": "judge",
                "model": "judge-1",
                "base_url": judge_srv.base_url,
                "max_retries": 0,
                "price_input_per_m": 10.0,
                "price_output_per_m": 30.0,
            }
            batch_ref = None
            if mode == "batch":
                batch_ref = run_judge_batch(prompts, answers, judge=judge, artifact_root=root, poll_seconds=0.05)
                assert judge_srv.count() == 0 and judge_srv.batch_lines == 16
                # a second prepare finds every call cached: no new batch
                assert batch_lines(prompts, answers, judge=judge, artifact_root=root) == []
            ref = judge_answers(prompts, answers, judge=judge, artifact_root=root)
            servers[mode] = (judge_srv.count(), judge_srv.batch_lines)
            ledger = cost_ledger({"generate": answers, "judge_batch": batch_ref, "judge": ref}, artifact_root=root)
        tables[mode] = (load_table(ref, ArtifactStore(root)), load_table(ledger, ArtifactStore(root)), root, batch_ref)
    return tables, servers


def test_batch_mode_produces_the_same_labels_as_online(tmp_path):
    with ScriptedOpenAIServer(lambda body: f"{body['model']} says {last_user_text(body)[::-1]}") as srv_model:
        tables, servers = _labels_both_ways(tmp_path, srv_model)
    online, batch = tables["online"][0], tables["batch"][0]
    assert servers["online"] == (16, 0)  # 8 prompts x 2 models judged online
    assert servers["batch"] == (0, 16)  # all through the batch, none online
    pd.testing.assert_frame_equal(online, batch)
    assert online["score"].notna().sum() == 14 and (online["failure_reason"] == "no [[n]] verdict").sum() == 2

    # the ledger: online pays full price for the judge, batch half, same tokens
    on_ledger, b_ledger = tables["online"][1].set_index("stage"), tables["batch"][1].set_index("stage")
    assert on_ledger.loc["judge", "calls_now"] == 16 and b_ledger.loc["judge", "calls_now"] == 0
    assert b_ledger.loc["judge", "cached"] == 16
    assert b_ledger.loc["judge_batch", "input_tokens"] == on_ledger.loc["judge", "input_tokens"]
    assert b_ledger.loc["judge_batch", "dollars_now"] == pytest.approx(on_ledger.loc["judge", "dollars_now"] / 2)
    assert on_ledger.loc["judge", "dollars_now"] > 0


def test_collect_refuses_an_unfinished_batch(tmp_path):
    root = str(tmp_path)
    with ScriptedOpenAIServer(judge_rule, batch_polls=100) as srv:
        import openai

        client = openai.OpenAI(api_key="x", base_url=srv.base_url)
        f = client.files.create(
            file=(
                "in.jsonl",
                b'{"custom_id": "k", "method": "POST", "url": "/v1/chat/completions", '
                b'"body": {"model": "j", "messages": []}}\n',
            ),
            purpose="batch",
        )
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(RuntimeError, match="not 'completed'"):
            collect_judge_batch(batch.id, judge={"model": "j", "base_url": srv.base_url}, artifact_root=root)
    assert not ArtifactStore(root).list("stages/judge_batch")


def test_tela_judge_batch_flag(tmp_path, monkeypatch, capsys):
    import json

    from router_tasks.cli import main

    monkeypatch.setenv("TELA_BATCH_POLL_SECONDS", "0.05")
    root = str(tmp_path)
    prompts = write_prompts(root, ROWS[:3])
    with ScriptedOpenAIServer(lambda body: "an answer") as srv_model:
        answers = generate_answers(
            prompts, models=[{"name": "a", "model": "a", "base_url": srv_model.base_url}], artifact_root=root
        )
    with ScriptedOpenAIServer(judge_rule, batch_polls=1) as judge_srv:
        judge = json.dumps({"name": "judge", "model": "judge-1", "base_url": judge_srv.base_url})
        args = [
            "--artifact-root",
            root,
            "judge",
            "--prompts",
            json.dumps(prompts),
            "--answers",
            json.dumps(answers),
            "--judge",
            judge,
            "--batch",
        ]
        assert main(args) == 0
        ref = json.loads(capsys.readouterr().out)
        assert judge_srv.batch_lines == 3 and judge_srv.count() == 0
    assert load_table(ref, ArtifactStore(root))["score"].notna().sum() == 3
