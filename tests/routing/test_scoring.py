"""`score_prompts`: input formats, output contract, known answer, clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, ROUTER_STRONG, ROUTER_WEAK
from router_tasks.core.store import ArtifactStore
from router_tasks.routing.scoring import score_prompts
from router_tasks.training.train import train_router

PROMPTS = [ROUTER_EASY_QUERY, ROUTER_HARD_QUERY, "What is 5 + 1?", ROUTER_EASY_QUERY]


@pytest.fixture(scope="module")
def champion_root(tmp_path_factory, router_toy_labels):
    """An artifact root holding a trained knn router, published as champion."""
    from router_tasks.core.stage import run_stage

    root = str(tmp_path_factory.mktemp("scoring") / "artifacts")
    labels = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(router_toy_labels), store=ArtifactStore(root))
    ref = train_router(labels, router_type="knn", router_params={"k": 5}, artifact_root=root)
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref})
    return root


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_scores_every_row_in_order(fmt, champion_root, tmp_path):
    src = tmp_path / f"prompts.{fmt}"
    df = pd.DataFrame({"prompt": PROMPTS, "user": ["a", "b", "c", "d"]})
    if fmt == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict(orient="records")))
    elif fmt == "csv":
        df.to_csv(src, index=False)
    else:
        df.to_parquet(src)
    out_path = tmp_path / "out" / "scores.parquet"
    out = score_prompts("champion", str(src), str(out_path), artifact_root=champion_root)

    written = pd.read_parquet(out_path)
    pd.testing.assert_frame_equal(written, out)
    quality_cols = [f"quality::{m}" for m in sorted([ROUTER_STRONG, ROUTER_WEAK, "smollm2"])]
    assert list(out.columns) == ["prompt", "prompt_id", "strong_win_rate", *quality_cols]
    assert out["prompt"].tolist() == PROMPTS
    assert out["strong_win_rate"].between(0, 1).all()
    assert out[quality_cols].stack().between(0, 1).all()
    win = out["strong_win_rate"]
    assert win[1] > win[0] + 0.2 and win[1] > win[2] + 0.2  # hard vs easy
    assert win[0] == win[3]  # duplicates score the same


def test_router_by_key_and_csv_output(champion_root, tmp_path):
    champion = ArtifactStore(champion_root).read_json("champion/CHAMPION.json")["router"]
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": ROUTER_HARD_QUERY}) + "\n")
    out = score_prompts(champion["key"], str(src), str(tmp_path / "o.csv"), artifact_root=champion_root)
    assert len(pd.read_csv(tmp_path / "o.csv")) == 1 and len(out) == 1


def test_empty_input_gives_empty_output(champion_root, tmp_path):
    src = tmp_path / "empty.csv"
    src.write_text("prompt\n")
    out = score_prompts("champion", str(src), str(tmp_path / "o.parquet"), artifact_root=champion_root)
    assert len(out) == 0 and "strong_win_rate" in out.columns


def test_input_errors_name_the_file_and_row(champion_root, tmp_path):
    no_col = tmp_path / "questions.csv"
    no_col.write_text("question\nhi\n")
    with pytest.raises(ValueError, match=r"questions\.csv: no 'prompt' column \(columns: \['question'\]\)"):
        score_prompts("champion", str(no_col), str(tmp_path / "o.parquet"), artifact_root=champion_root)
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"prompt": "fine"}\n{"prompt": null}\n')
    with pytest.raises(ValueError, match=r"blank\.jsonl: row 1 has an empty"):
        score_prompts("champion", str(blank), str(tmp_path / "o.parquet"), artifact_root=champion_root)
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        score_prompts(
            "champion", str(tmp_path / "missing.jsonl"), str(tmp_path / "o.parquet"), artifact_root=champion_root
        )
    with pytest.raises(ValueError, match="unsupported"):
        score_prompts("champion", str(blank), str(tmp_path / "o.xlsx"), artifact_root=champion_root)


def test_no_champion_is_a_clear_error(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    with pytest.raises(FileNotFoundError, match="no champion router"):
        score_prompts("champion", str(src), str(tmp_path / "o.parquet"), artifact_root=str(tmp_path / "empty"))


def test_predictions_suite_rejects_nan_out_of_range_and_missing_rows():
    from router_tasks.data.quality import DataQualityError
    from router_tasks.routing.scoring import check_predictions

    good = pd.DataFrame({"prompt": ["a", "b"], "strong_win_rate": [0.2, 0.9], "quality::m": [0.5, 1.0]})
    check_predictions(good, expected_rows=2)
    with pytest.raises(DataQualityError, match="strong_win_rate"):
        check_predictions(good.assign(strong_win_rate=[0.2, float("nan")]), expected_rows=2)
    with pytest.raises(DataQualityError, match="quality::m"):
        check_predictions(good.assign(**{"quality::m": [0.5, 1.3]}), expected_rows=2)
    with pytest.raises(DataQualityError, match="one_row_per_input"):
        check_predictions(good, expected_rows=3)


# Small settings so every router kind trains in seconds on the toy labels.
EVERY_KIND = {
    "knn": {"k": 5},
    "mf": {"epochs": 5, "batch_size": 16},
    "random": {"seed": 7},
    "bert": {"epochs": 2, "train_layers": 1, "cpu_threads": 1},
    "causal_llm": {"base_model": "tiny", "epochs": 4, "batch_size": 16, "lr": 0.005, "max_length": 48},
    "ensemble": {"knn_k": 5, "gbt_rounds": 20, "gbt_min_samples_leaf": 2, "gbt_pca": 2},
}


def test_every_registered_router_kind_is_covered():
    from router_tasks.routers import ROUTERS

    assert set(EVERY_KIND) == set(ROUTERS)


@pytest.mark.parametrize("kind", sorted(EVERY_KIND))
def test_tela_score_on_every_router_kind(kind, router_toy_labels, tmp_path):
    """`tela score --router <artifact>` works for each router type the registry knows
    (causal_llm on the tiny in-code LM, bert on MiniLM): one row per prompt, every model's
    quality, and exactly the predictions of the router loaded from the artifact."""
    import numpy as np

    from router_tasks.cli import main
    from router_tasks.core.prompts import prompt_id
    from router_tasks.core.stage import run_stage
    from router_tasks.routers import load_router

    root = str(tmp_path / "artifacts")
    labels = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(router_toy_labels), store=ArtifactStore(root))
    ref = train_router(labels, router_type=kind, router_params=EVERY_KIND[kind], use_gpu=False, artifact_root=root)
    src = tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(src, index=False)
    out_path = tmp_path / "scores.parquet"
    assert (
        main(["--artifact-root", root, "score", "--router", ref["key"], "--input", str(src), "--output", str(out_path)])
        == 0
    )
    out = pd.read_parquet(out_path)

    models = sorted([ROUTER_STRONG, ROUTER_WEAK, "smollm2"])
    assert out.shape == (len(PROMPTS), 3 + len(models))
    assert list(out.columns) == ["prompt", "prompt_id", "strong_win_rate", *[f"quality::{m}" for m in models]]
    assert out["prompt"].tolist() == PROMPTS and out["prompt_id"].tolist() == [prompt_id(p) for p in PROMPTS]
    assert out["strong_win_rate"].between(0, 1).all()

    router = load_router(ref, ArtifactStore(root))
    assert router.meta["kind"] == kind
    quality = router.predict_quality(PROMPTS)
    np.testing.assert_allclose(
        out[[f"quality::{m}" for m in models]].to_numpy(), quality[models].to_numpy(), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(out["strong_win_rate"].to_numpy(), router.strong_win_rate(PROMPTS), rtol=0, atol=1e-6)
