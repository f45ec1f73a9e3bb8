"""The many-model contract: tela train --labels FILE, tela score --prices, tela route.

A world of our own, not the bundled data: two topics of prompts, three made-up models.
`tiny/fast` is right on chat and wrong on arithmetic; `mid/ok` is right on arithmetic
half the time; `big/slow` is always right and writes three times longer replies.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router_tasks.cli import main

MODELS = ["tiny/fast", "mid/ok", "big/slow"]
PRICES = {"_about": "test", "tiny/fast": [0.1, 0.2], "mid/ok": [0.5, 1.0], "big/slow": [5.0, 20.0]}


def _prompts(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 2:
            a, b = rng.integers(100, 999, 2)
            out.append(("math", f"Compute {a} times {b} and subtract {rng.integers(1, 99)}; show the steps."))
        else:
            out.append(
                (
                    "chat",
                    f"Suggest a friendly name for a {rng.choice(['cat', 'dog', 'boat', 'cafe'])} "
                    f"that is {rng.choice(['blue', 'small', 'old', 'loud'])}, number {i}.",
                )
            )
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("route")
    rows = []
    rng = np.random.default_rng(1)
    for topic, p in _prompts(120, 0):
        for m in MODELS:
            if m == "tiny/fast":
                ok = topic == "chat"
            elif m == "mid/ok":
                ok = topic == "chat" or rng.random() < 0.5
            else:
                ok = True
            tokens = {"tiny/fast": 40, "mid/ok": 60, "big/slow": 150}[m] * (2 if topic == "math" else 1)
            rows.append({"prompt": p, "model": m, "correct": int(ok), "output_tokens": tokens})
    labels = d / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    (d / "prices.json").write_text(json.dumps(PRICES))
    test = _prompts(40, 99)
    pd.DataFrame({"prompt": [p for _, p in test]}).to_json(d / "prompts.jsonl", orient="records", lines=True)
    return d, labels, [t for t, _ in test]


def _train(root, labels, capsys, *extra, kind="knn"):
    params = ["--params", '{"k": 20}'] if kind == "knn" else []
    assert (
        main(["--artifact-root", root, "train", "--labels", str(labels), "--router-type", kind, *params, *extra]) == 0
    )
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # a real MiniLM embeds the prompts
def test_train_score_route_on_a_labels_file(world, tmp_path, capsys):
    d, labels, topics = world
    root = str(tmp_path / "art")
    ref = _train(root, labels, capsys, "--prices", str(d / "prices.json"))
    assert ref["stage"] == "train" and ref["key"].startswith("stages/train/")

    out = tmp_path / "scores.parquet"
    assert (
        main(
            [
                "--artifact-root",
                root,
                "score",
                "--router",
                ref["key"],
                "--input",
                str(d / "prompts.jsonl"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "scored 40 prompts" in capsys.readouterr().out
    s = pd.read_parquet(out)
    math = np.array(topics) == "math"
    # quality learned per topic; cost predicted per model and prompt (longer replies for math)
    assert s.loc[math, "quality::tiny/fast"].mean() < 0.3 < 0.7 < s.loc[~math, "quality::tiny/fast"].mean()
    for m in MODELS:
        assert (s[f"cost::{m}"] > 0).all()
    assert (s["cost::big/slow"] > 10 * s["cost::tiny/fast"]).all()
    assert s.loc[math, "cost::big/slow"].mean() > 1.3 * s.loc[~math, "cost::big/slow"].mean()

    # a budget a bit above "tiny everywhere": the extra money goes to the arithmetic prompts
    tiny_cost = s["cost::tiny/fast"].mean() * 1000
    routed = tmp_path / "routed.csv"
    assert (
        main(
            [
                "--artifact-root",
                root,
                "route",
                "--router",
                ref["key"],
                "--input",
                str(d / "prompts.jsonl"),
                "--prices",
                str(d / "prices.json"),
                "--pool",
                ",".join(MODELS),
                "--budget-per-1k",
                str(tiny_cost * 6),
                "--output",
                str(routed),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["mean_cost_per_1k"] <= tiny_cost * 6 + 1e-9 and summary["met"]
    r = pd.read_csv(routed)
    assert (r.loc[math, "model"] != "tiny/fast").mean() > 0.5  # the arithmetic prompts get the money
    assert (r.loc[math, "model"] != "tiny/fast").mean() > (r.loc[~math, "model"] != "tiny/fast").mean() + 0.3
    assert not (r.loc[~math, "model"] == "big/slow").any()
    # a quality target, and a pool that leaves the dear model out (no retraining)
    assert (
        main(
            [
                "--artifact-root",
                root,
                "route",
                "--router",
                ref["key"],
                "--input",
                str(d / "prompts.jsonl"),
                "--pool",
                "tiny/fast,mid/ok",
                "--target-quality",
                "0.7",
                "--output",
                str(routed),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert set(pd.read_csv(routed)["model"]) <= {"tiny/fast", "mid/ok"} and summary["mean_quality"] >= 0.7


def test_bad_labels_rows_are_quarantined_and_missing_prices_named(world, tmp_path, capsys):
    d, labels, _ = world
    df = pd.read_csv(labels).astype({"correct": str})
    df.loc[3, "correct"] = "maybe"  # one unreadable verdict: set aside, not fatal
    bad = tmp_path / "labels.parquet"
    df.to_parquet(bad)
    root = str(tmp_path / "art")
    ref = _train(root, bad, capsys, kind="random")  # no --prices stored
    manifest = json.loads((tmp_path / "art" / ref["key"] / "router.json").read_text())
    assert manifest["training_data"]["n_labels"] == 360 - 1  # the unreadable row was set aside
    rc = main(
        [
            "--artifact-root",
            root,
            "route",
            "--router",
            ref["key"],
            "--input",
            str(d / "prompts.jsonl"),
            "--budget-per-1k",
            "1",
            "--output",
            str(tmp_path / "r.csv"),
        ]
    )
    assert rc == 2 and "needs prices" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--labels", str(bad), "--router-type", "knn", "--nope"])
    missing = tmp_path / "nomodel.csv"
    df.drop(columns=["model"]).to_csv(missing, index=False)
    assert main(["--artifact-root", root, "train", "--labels", str(missing)]) == 2
    assert "no column(s) ['model']" in capsys.readouterr().err
