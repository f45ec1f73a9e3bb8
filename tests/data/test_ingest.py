import json

import pandas as pd
import pytest

from router_tasks.core.prompts import prompt_id
from router_tasks.core.stage import load_table, read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import InputDataError, ingest_prompts


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_normalises_dedupes_and_extracts_gold(tmp_path, local_root):
    src = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"question": "What is  2+2?", "answer": "2+2=4\n#### 4"},
            {"question": "What is 2+2? "},  # same prompt after whitespace normalisation
            {"question": "Tell me a joke", "reference": "A short joke."},
            {"question": "Big sum?", "answer": "... #### 1,234"},
        ],
    )
    ref = ingest_prompts(src, artifact_root=local_root)
    table = load_table(ref, ArtifactStore(local_root))
    assert table["prompt"].tolist() == ["What is 2+2?", "Tell me a joke", "Big sum?"]
    assert table["prompt_id"].tolist() == [prompt_id(p) for p in table["prompt"]]
    assert table["gold_answer"].tolist()[0] == "4" and table["gold_answer"].tolist()[2] == "1234"
    assert table["gold_type"].tolist()[0] == "number"
    assert table["reference_answer"].tolist()[1] == "A short joke."
    assert ref["rows"] == 3


def test_sample_and_shards_are_deterministic(tmp_path, local_root):
    src = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"question number {i}"} for i in range(50)])
    a = load_table(
        ingest_prompts(src, sample=10, shards=4, seed=1, artifact_root=local_root), ArtifactStore(local_root)
    )
    b = load_table(
        ingest_prompts(src, sample=10, shards=4, seed=1, artifact_root=local_root), ArtifactStore(local_root)
    )
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 10 and set(a["shard"]) <= {0, 1, 2, 3}


def test_csv_parquet_and_s3_sources(tmp_path, s3_root, moto_server):
    pd.DataFrame({"prompt": ["a", "b"]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"prompt": ["c", "d"]}).to_parquet(tmp_path / "p.parquet")
    store = ArtifactStore(s3_root)
    store.write_bytes("incoming/p.jsonl", b'{"prompt": "e"}\n')
    bucket = s3_root.split("/")[2]
    for src, expected in [
        (str(tmp_path / "p.csv"), ["a", "b"]),
        (str(tmp_path / "p.parquet"), ["c", "d"]),
        (f"s3://{bucket}/artifacts/incoming/p.jsonl", ["e"]),
    ]:
        ref = ingest_prompts(src, artifact_root=s3_root)
        assert load_table(ref, store)["prompt"].tolist() == expected


def test_changed_file_is_ingested_again(tmp_path, local_root):
    path = tmp_path / "p.jsonl"
    first = ingest_prompts(_jsonl(path, [{"prompt": "a"}]), artifact_root=local_root)
    again = ingest_prompts(str(path), artifact_root=local_root)
    changed = ingest_prompts(_jsonl(path, [{"prompt": "a"}, {"prompt": "b"}]), artifact_root=local_root)
    assert again["reused"] and again["key"] == first["key"]
    assert changed["key"] != first["key"] and changed["rows"] == 2


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("nocol.jsonl", b'{"text": "hi"}\n', "missing 'prompt' column"),
        ("bad.jsonl", b'{"prompt": "ok"}\n{"prompt": \n', "line 2: malformed JSON"),
        ("latin1.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "line 2: invalid UTF-8"),
        ("type.jsonl", b'{"prompt": "ok"}\n{"prompt": 42}\n', "row 2: field 'prompt' must be text"),
        ("blank.jsonl", b'{"prompt": "   "}\n', "row 1: field 'prompt' is empty"),
        ("huge.jsonl", b'{"prompt": "' + b"x" * 200_001 + b'"}\n', "row 1: field 'prompt' has 200,001 characters"),
        ("wrong.parquet", b"PAR1 not really parquet", "not a readable Parquet"),
        ("data.txt", b"hello", "cannot tell the format"),
    ],
)
def test_bad_input_names_file_row_and_field(tmp_path, local_root, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=message) as err:
        ingest_prompts(str(path), artifact_root=local_root)
    assert name in str(err.value)
    assert ArtifactStore(local_root).list() == []  # nothing stored for a failed ingest


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"prompt": [1, 2]}), "wrong Parquet schema: column 'prompt' has type int64; expected string"),
        (pd.DataFrame({"text": ["a"]}), "missing 'prompt' column"),
    ],
)
def test_parquet_with_the_wrong_schema(tmp_path, local_root, frame, message):
    path = tmp_path / "wrong_schema.parquet"
    frame.to_parquet(path)
    with pytest.raises(InputDataError, match=message):
        ingest_prompts(str(path), artifact_root=local_root)
    assert ArtifactStore(local_root).list() == []


def test_json_escape_that_is_not_utf8(tmp_path, local_root):
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "caf\\udce9"}\n', encoding="utf-8")
    with pytest.raises(InputDataError, match="line 2: field 'prompt' is not valid UTF-8"):
        ingest_prompts(str(path), artifact_root=local_root)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b'{"text": "hi"}\n', "missing 'prompt' column"),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "line 2: invalid UTF-8"),
        (b'{"prompt": "ok"}\n{"prompt": \n', "line 2: malformed JSON"),
        (b'{"prompt": "' + b"x" * 10_000_001 + b'"}\n', "row 1: field 'prompt' has 10,000,001 characters"),
    ],
)
def test_tela_ingest_reports_bad_input(tmp_path, local_root, capsys, content, message):
    from router_tasks.cli import main

    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    assert main(["--artifact-root", local_root, "ingest", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tela ingest: error: ") and str(path) in err and message in err
    assert ArtifactStore(local_root).list() == []


def test_tela_ingest_quarantines_and_fails_under_the_kept_share(tmp_path, local_root, capsys, monkeypatch):
    from router_tasks.cli import main

    monkeypatch.setenv("TELA_DQ_THRESHOLDS", '{"max_prompt_chars": 20}')
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(3)] + [{"prompt": "x" * 30}])
    assert main(["--artifact-root", local_root, "ingest", path]) == 2
    err = capsys.readouterr().err
    assert "kept_share_at_least" in err and "observed=0.75" in err and "Data Docs:" in err
    assert not [k for k in ArtifactStore(local_root).list() if k.startswith("stages/")]


def test_rows_may_mix_prompt_and_question(tmp_path, local_root):
    src = _jsonl(tmp_path / "mixed.jsonl", [{"question": "Q one?", "answer": "#### 1"}, {"prompt": "P two?"}])
    table = load_table(ingest_prompts(src, artifact_root=local_root), ArtifactStore(local_root))
    assert table["prompt"].tolist() == ["Q one?", "P two?"]
    assert table["gold_answer"].tolist()[0] == "1"


def test_bad_rows_are_quarantined_with_row_and_reason(tmp_path, local_root):
    good = [{"prompt": f"Good question {i}?"} for i in range(60)]
    bad = [
        {"prompt": "   "},
        {"prompt": None},
        {"prompt": 7},
        {"prompt": "y" * 200},
        {"prompt": "Sum?", "gold_answer": "seven", "gold_type": "number"},
        {"prompt": "Pick?", "gold_answer": "Q", "gold_type": "letter"},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:30] + bad + good[30:]))
    ref = ingest_prompts(str(path), max_prompt_chars=100, thresholds={"min_kept_share": 0.8}, artifact_root=local_root)
    store = ArtifactStore(local_root)
    assert load_table(ref, store)["prompt"].tolist() == [r["prompt"] for r in good]
    q = load_table(ref, store, "quarantine_input.parquet")
    assert q["row"].tolist() == [31, 32, 33, 34, 35, 36]  # 1-based rows of the file
    reasons = q["reason"].tolist()
    assert "empty after normalising" in reasons[0] and "must be text, got NoneType" in reasons[1]
    assert "must be text, got int" in reasons[2] and "200 characters; the limit is 100" in reasons[3]
    assert "'seven' is not a number" in reasons[4] and "'Q' is not a single letter" in reasons[5]
    assert read_manifest(store, ref)["stats"]["input_rows_rejected"] == 6


def test_a_file_mostly_bad_is_refused_naming_rows(tmp_path, local_root):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": ""}\n{"prompt": null}\n')
    with pytest.raises(InputDataError, match=r"2 of 3 rows set aside.*min_kept_share.*row 2: .*row 3: "):
        ingest_prompts(str(path), artifact_root=local_root)
    assert ArtifactStore(local_root).list() == []


def test_one_file_per_shard(tmp_path, local_root):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"Prompt {i}"} for i in range(40)])
    ref = ingest_prompts(path, shards=4, artifact_root=local_root)
    store = ArtifactStore(local_root)
    from router_tasks.data.ingest import prompt_shards, read_prompt_shard

    assert prompt_shards(ref, store) == (4, [0, 1, 2, 3])
    whole = load_table(ref, store)
    for s in range(4):
        store.reads.clear()
        part = read_prompt_shard(ref, s, store)
        assert list(store.reads) == [f"{ref['key']}/shards/{s:05d}.parquet"] or set(store.reads) == {
            f"{ref['key']}/_MANIFEST.json",
            f"{ref['key']}/shards/{s:05d}.parquet",
        }
        assert sorted(part["prompt_id"]) == sorted(whole.loc[whole["shard"] == s, "prompt_id"])


def test_a_json_array_is_read_by_ingest_and_score_alike(tmp_path, local_root):
    from router_tasks.data.table_files import read_prompts

    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "First?"}, {"prompt": "Second?"}]))
    table = load_table(ingest_prompts(str(path), artifact_root=local_root), ArtifactStore(local_root))
    assert table["prompt"].tolist() == ["First?", "Second?"] == read_prompts(str(path))
