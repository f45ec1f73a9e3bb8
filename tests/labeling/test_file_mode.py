"""`tela generate --input` / `tela judge --input`: file in, file out, over real HTTP."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from router_tasks.cli import main
from tests.openai_test_server import Reply, ScriptedOpenAIServer, last_user_text

SECRET = "sk-file-mode-secret-0000"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_generate_then_judge_files_and_a_rerun_pays_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TELA_FILE_KEY", SECRET)
    root = str(tmp_path / "artifacts")
    prompts = _write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "What is the capital of France?", "reference_answer": "Paris.", "topic": "geo"},
            {"prompt": "What is 6 * 7?", "gold_answer": "42", "gold_type": "number", "topic": "math"},
            {
                "prompt": "What is the capital of France?",
                "reference_answer": "Paris.",
                "topic": "dup",
            },  # same prompt twice
            {"prompt": "   ", "reference_answer": "x", "topic": "blank"},
        ],
    )

    def model_rule(body):
        text = last_user_text(body)
        return "It is Paris." if "France" in text else "6 * 7 = 42"

    with ScriptedOpenAIServer(model_rule, api_key=SECRET) as srv:
        args = [
            "--artifact-root",
            root,
            "generate",
            "--input",
            prompts,
            "--model",
            "oss-1",
            "--base-url",
            srv.base_url,
            "--api-key-env",
            "TELA_FILE_KEY",
            "--concurrency",
            "2",
            "--output",
            str(tmp_path / "answers.parquet"),
        ]
        assert main(args) == 0
        assert "answered 3 of 4 prompts" in capsys.readouterr().out
        assert srv.count() == 2  # the repeated prompt is asked once; the blank one never
        assert main(args) == 0  # again: everything from the request cache
        assert srv.count() == 2
    answers = pd.read_parquet(tmp_path / "answers.parquet")
    assert answers["topic"].tolist() == ["geo", "math", "dup", "blank"]  # input columns and order kept
    assert answers["answer"].tolist()[:3] == ["It is Paris.", "6 * 7 = 42", "It is Paris."]
    assert answers["error"].tolist()[3] == "empty prompt" and pd.isna(answers["answer"][3])
    assert (answers["model"] == "oss-1").all()

    def judge_rule(body):
        return "Matches the reference.\n[[5]]" if "Paris" in last_user_text(body) else Reply(content="no verdict here")

    with ScriptedOpenAIServer(judge_rule) as judge:
        args = [
            "--artifact-root",
            root,
            "judge",
            "--input",
            str(tmp_path / "answers.parquet"),
            "--judge-model",
            "judge-1",
            "--base-url",
            judge.base_url,
            "--output",
            str(tmp_path / "judged.csv"),
        ]
        assert main(args) == 0
        assert judge.count() == 1  # the two France rows send identical messages: one call
    judged = pd.read_csv(tmp_path / "judged.csv")
    assert judged["topic"].tolist() == ["geo", "math", "dup", "blank"]
    assert judged["score"].tolist()[0] == 5 and judged["method"].tolist()[1] == "exact_match"
    assert bool(judged["correct"][1]) is True
    assert judged["failure_reason"].tolist()[3] == "no answer"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_file_mode_errors_name_what_is_missing(tmp_path, capsys):
    no_prompt = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "hi"}])
    out = str(tmp_path / "o.parquet")
    assert (
        main(["generate", "--input", no_prompt, "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--output", out])
        == 2
    )
    assert "no ['prompt'] column" in capsys.readouterr().err
    assert main(["generate", "--input", no_prompt, "--output", out]) == 2
    assert "--input needs --model" in capsys.readouterr().err
    no_ref = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "hi", "answer": "yo"}])
    assert (
        main(["judge", "--input", no_ref, "--judge-model", "j", "--base-url", "http://127.0.0.1:9/v1", "--output", out])
        == 2
    )
    assert "reference_answer" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()
    with pytest.raises(SystemExit):
        main(["generate", "--input", no_prompt, "--model", "m", "--concurrency", "lots", "--output", out])


def test_sigterm_midway_then_rerun_pays_for_nothing_twice(tmp_path):
    """A stopped run (SIGTERM, as a container stop sends) keeps every reply it paid for,
    even those in flight when the signal came; the re-run asks only for the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.openai_test_server import Faults

    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"item {i}"} for i in range(40)])
    out = tmp_path / "answers.parquet"
    tela = str(Path(sys.executable).parent / "tela")
    with ScriptedOpenAIServer(lambda body: "ok", faults=Faults(latency_s=0.15)) as srv:
        cmd = [
            tela,
            "--artifact-root",
            str(tmp_path / "artifacts"),
            "generate",
            "--input",
            prompts,
            "--model",
            "m",
            "--base-url",
            srv.base_url,
            "--concurrency",
            "3",
            "--output",
            str(out),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while srv.count() < 12 and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM, proc.stdout.read().decode()[-2000:]
        assert not out.exists()  # no partial output file
        first = srv.count()
        assert 12 <= first < 40

        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        stats = srv.stats()
        assert stats["resent_after_success"] == 0  # the in-flight replies were kept too
        assert stats["requests"] == 40
    assert pd.read_parquet(out)["answer"].tolist() == ["ok"] * 40
