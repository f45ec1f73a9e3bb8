import pandas as pd
import pytest

from router_tasks.core.stage import MANIFEST, read_manifest, resolve_ref, run_stage
from router_tasks.core.store import ArtifactStore


def _source(store, value):
    def compute(ctx):
        ctx.write_table(pd.DataFrame({"v": [value, value + 1]}))

    return run_stage("source", "1", compute, config={"value": value}, store=store)


def test_same_inputs_and_config_reuse_the_artifact(any_root):
    store = ArtifactStore(any_root)
    calls = []

    def double(ctx):
        calls.append(1)
        ctx.write_table(ctx.read_input("src").assign(v=lambda d: d.v * 2))

    src = _source(store, 1)
    first = run_stage("double", "1", double, inputs={"src": src}, store=store)
    second = run_stage("double", "1", double, inputs={"src": src}, store=store)
    assert len(calls) == 1
    assert not first["reused"] and second["reused"]
    assert first["key"] == second["key"] and first["fingerprint"] == second["fingerprint"]
    m = read_manifest(store, first)
    assert m["rows_out"] == 2 and m["inputs"]["src"]["fingerprint"] == src["fingerprint"]
    assert set(m) >= {"schema", "config", "code_version", "seconds", "files"}


def test_key_changes_with_config_version_and_input(local_root):
    store = ArtifactStore(local_root)
    a, b = _source(store, 1), _source(store, 5)
    assert a["key"] != b["key"]

    def ident(ctx):
        ctx.write_table(ctx.read_input("src"))

    k1 = run_stage("ident", "1", ident, inputs={"src": a}, store=store)["key"]
    k2 = run_stage("ident", "2", ident, inputs={"src": a}, store=store)["key"]
    k3 = run_stage("ident", "1", ident, inputs={"src": b}, store=store)["key"]
    k4 = run_stage("ident", "1", ident, inputs={"src": a}, config={"x": 1}, store=store)["key"]
    assert len({k1, k2, k3, k4}) == 4


def test_crash_before_manifest_is_never_taken_for_complete(any_root):
    store = ArtifactStore(any_root)
    src = _source(store, 1)
    attempts = []

    def flaky(ctx):
        attempts.append(1)
        ctx.write_table(pd.DataFrame({"v": [1]}), "part-0.parquet")
        if len(attempts) == 1:
            raise RuntimeError("worker died midway")
        ctx.write_table(pd.DataFrame({"v": [2]}), "part-1.parquet")
        ctx.write_table(pd.DataFrame({"v": [1, 2]}))

    with pytest.raises(RuntimeError, match="midway"):
        run_stage("flaky", "1", flaky, inputs={"src": src}, store=store)
    ref = run_stage("flaky", "1", flaky, inputs={"src": src}, store=store)
    assert len(attempts) == 2 and not ref["reused"]
    assert sorted(store.list(ref["key"])) == sorted(
        f"{ref['key']}/{f}" for f in ("part-0.parquet", "part-1.parquet", "data.parquet", MANIFEST)
    )
    assert store.read_parquet(f"{ref['key']}/data.parquet")["v"].tolist() == [1, 2]


def test_a_file_lost_after_completion_forces_recompute(local_root):
    store = ArtifactStore(local_root)
    ref = _source(store, 3)
    store.delete(f"{ref['key']}/data.parquet")
    again = _source(store, 3)
    assert not again["reused"]
    assert store.read_parquet(f"{again['key']}/data.parquet")["v"].tolist() == [3, 4]


def test_resolve_ref_from_key_uri_and_json(local_root):
    store = ArtifactStore(local_root)
    ref = _source(store, 1)
    import json

    for value in (ref["key"], store.uri(ref["key"]), json.dumps(ref)):
        assert resolve_ref(value, store)["fingerprint"] == ref["fingerprint"]
    with pytest.raises(FileNotFoundError, match="no complete artifact"):
        resolve_ref("stages/source/doesnotexist", store)
