"""The `tela` CLI contracts other tools rely on, run in-process through `main()`."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from router_tasks.cli import main
from router_tasks.core.store import ArtifactStore


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random router trained on a slice of the bundled RouteLLM labels, as champion."""
    from router_tasks.core.stage import run_stage
    from router_tasks.data.routellm import routellm_training_labels
    from router_tasks.training.train import train_router

    root = str(tmp_path_factory.mktemp("cli") / "artifacts")
    labels = routellm_training_labels().groupby("benchmark").head(200).reset_index(drop=True)
    ref = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(labels), store=ArtifactStore(root))
    router = train_router(ref, router_type="random", artifact_root=root)
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": router})
    return root, router


def test_evaluate_writes_metrics_scores_and_plot(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "eval"
    rc = main(
        [
            "--artifact-root",
            root,
            "evaluate",
            "--router",
            "champion",
            "--benchmark",
            "mt-bench",
            "--protocol",
            "transfer",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "transfer" and metrics["benchmark"] == "mt-bench"
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns[:2]) == ["prompt", "strong_win_rate"]
    assert len(scores) == 72 and scores["strong_win_rate"].between(0, 1).all()  # 80 minus 8 contaminated
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_score_and_calibrate(trained, tmp_path, capsys):
    root, _ = trained
    src = tmp_path / "p.csv"
    pd.DataFrame({"prompt": [f"question {i}?" for i in range(40)]}).to_csv(src, index=False)
    assert main(["--artifact-root", root, "score", "--input", str(src), "--output", str(tmp_path / "o.parquet")]) == 0
    scored = pd.read_parquet(tmp_path / "o.parquet")
    assert len(scored) == 40 and "strong_win_rate" in scored
    capsys.readouterr()
    assert main(["--artifact-root", root, "calibrate", "--input", str(src), "--share", "0.25"]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    assert abs(cal["achieved_strong_share"] - 0.25) <= 0.05 and 0 <= cal["threshold"] <= 1
    prices = json.dumps({"gpt-4-1106-preview": 10.0, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.6})
    assert main(["--artifact-root", root, "calibrate", "--input", str(src), "--budget", "3", "--prices", prices]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    assert cal["achieved_cost_per_prompt"] <= 3 and 0 <= cal["target_quality"] <= 1


def test_errors_are_one_clear_line(tmp_path, capsys):
    root = str(tmp_path / "empty")
    assert main(["--artifact-root", root, "evaluate", "--router", "champion"]) == 2
    assert "no champion router" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt column"}\n')
    assert main(["--artifact-root", root, "ingest", str(bad)]) == 2
    assert "missing 'prompt' column" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--router", "champion", "--benchmarks", "arena"],
        ["pipeline", "--benchmarks", "arena"],
    ],
)
def test_unknown_benchmark_is_one_clean_error_line(trained, argv, capsys):
    root, _ = trained
    assert main(["--artifact-root", root, *argv]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'arena'" in err and "Traceback" not in err


def test_many_model_leave_task_out_from_the_cli(tmp_path, capsys):
    out = tmp_path / "lto"
    pool = "google/gemini-1.5-flash,openai/gpt-4o-mini-2024-07-18,openai/gpt-4o-2024-08-06"
    assert (
        main(
            [
                "--artifact-root",
                str(tmp_path / "a"),
                "evaluate",
                "--benchmark",
                "zeroeval-gsm8k",
                "--pool",
                pool,
                "--protocol",
                "leave-group-out",
                "--router-types",
                "random",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "leave-group-out" and metrics["trained_on"]["task"] == "crux"
    assert "router-random" in metrics["metrics"]
    # a pool model the other task has no replies from is one clear line, not a traceback
    assert (
        main(
            [
                "--artifact-root",
                str(tmp_path / "a"),
                "evaluate",
                "--benchmark",
                "zeroeval-crux",
                "--pool",
                "Qwen/Qwen2.5-3B-Instruct,openai/gpt-4o-2024-08-06",
                "--protocol",
                "leave-group-out",
                "--router-types",
                "random",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Qwen/Qwen2.5-3B-Instruct" in err and "no replies in both" in err and "Traceback" not in err
