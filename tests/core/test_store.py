import pandas as pd
import pytest

from router_tasks.core.store import ArtifactStore


def test_round_trip_bytes_json_parquet(any_root):
    store = ArtifactStore(any_root)
    store.write_bytes("a/b.bin", b"\x00\x01")
    store.write_json("a/c.json", {"x": [1, 2]})
    df = pd.DataFrame({"p": ["x", "y"], "q": [1.5, None]})
    store.write_parquet("d/t.parquet", df)

    assert store.read_bytes("a/b.bin") == b"\x00\x01"
    assert store.read_json("a/c.json") == {"x": [1, 2]}
    pd.testing.assert_frame_equal(store.read_parquet("d/t.parquet"), df)
    assert store.exists("a/b.bin") and not store.exists("a/nope")
    assert store.list("a/") == ["a/b.bin", "a/c.json"]
    assert store.size("a/b.bin") == 2
    with pytest.raises(FileNotFoundError):
        store.read_bytes("a/nope")


def test_s3_objects_live_under_the_prefix(s3_root, moto_server):
    import boto3

    store = ArtifactStore(s3_root)
    store.write_bytes("k.txt", b"hi")
    bucket = s3_root.split("/")[2]
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=moto_server).list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["artifacts/k.txt"]
    assert store.uri("k.txt") == f"{s3_root}/k.txt"


def test_local_write_leaves_no_temp_file_when_interrupted(local_root, monkeypatch):
    store = ArtifactStore(local_root)
    store.write_bytes("x.bin", b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write_bytes("x.bin", b"new-but-never-finished")
    monkeypatch.undo()
    assert store.read_bytes("x.bin") == b"old"
    assert store.list() == ["x.bin"]


def test_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="expected a local path"):
        ArtifactStore("gs://bucket/x")
