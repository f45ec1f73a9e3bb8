"""The stage contract under crashes and concurrency: stale manifests, checksums, two runs
computing one key, incomplete outputs recomputed."""

from __future__ import annotations

import json
import threading
import time

import pytest

from router_tasks.core import stage as stage_mod
from router_tasks.core.stage import MANIFEST, artifact_key, find_complete, run_stage
from router_tasks.core.store import ArtifactStore


def test_crash_midway_through_a_recompute_is_not_taken_for_complete(any_root):
    store = ArtifactStore(any_root)
    calls = []

    def first(ctx):
        calls.append("first")
        ctx.write_file("a.bin", b"AAAA")
        ctx.write_file("b.bin", b"BBBB")

    ref = run_stage("crashy", "1", first, config={"x": 1}, store=store)
    store.delete(f"{ref['key']}/a.bin")  # damaged: the next run recomputes

    def crashing(ctx):
        ctx.write_file("b.bin", b"bbbb")  # same size, new content...
        raise RuntimeError("killed")  # ...and the run dies before a.bin

    with pytest.raises(RuntimeError, match="killed"):
        run_stage("crashy", "1", crashing, config={"x": 1}, store=store)
    store.write_bytes(f"{ref['key']}/a.bin", b"AAAA")  # even with every listed file back at its size
    assert find_complete(store, ref["key"]) is None
    again = run_stage("crashy", "1", first, config={"x": 1}, store=store)
    assert calls == ["first", "first"] and not again["reused"]


def test_a_file_changed_at_the_same_size_fails_the_checksum(local_root):
    store = ArtifactStore(local_root)
    ref = run_stage("sums", "1", lambda ctx: ctx.write_file("w.bin", b"12345678"), store=store)
    assert find_complete(store, ref["key"]) is not None
    store.write_bytes(f"{ref['key']}/w.bin", b"87654321")
    assert find_complete(store, ref["key"]) is None
    assert not run_stage("sums", "1", lambda ctx: ctx.write_file("w.bin", b"12345678"), store=store)["reused"]


def test_two_runs_computing_one_key_compute_once(any_root, monkeypatch):
    monkeypatch.setattr(stage_mod, "WAIT_POLL_S", 0.05)
    computed = []
    started = threading.Barrier(2)
    waiting = threading.Event()  # set when a run finds the key locked (it then waits)
    try_acquire = stage_mod._StageLock.try_acquire

    def try_acquire_seen(lock):
        got = try_acquire(lock)
        if not got:
            waiting.set()
        return got

    monkeypatch.setattr(stage_mod._StageLock, "try_acquire", try_acquire_seen)

    def compute(ctx):
        computed.append(threading.current_thread().name)
        waiting.wait(20)  # hold the key until the other run has arrived and waits for it
        ctx.write_file("out.bin", f"written by {threading.current_thread().name}".encode())

    results, errors = {}, []

    def run(name):
        try:
            started.wait()
            results[name] = run_stage("shared", "1", compute, config={"k": 1}, store=ArtifactStore(any_root))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(computed) == 1
    a, b = results["one"], results["two"]
    assert a["fingerprint"] == b["fingerprint"] and sorted([a["reused"], b["reused"]]) == [False, True]
    store = ArtifactStore(any_root)
    manifest = find_complete(store, a["key"])
    assert manifest is not None  # the files on disk are the ones the manifest vouches for
    assert store.read_bytes(f"{a['key']}/out.bin") == f"written by {computed[0]}".encode()


def test_an_expired_s3_lease_is_taken_over(s3_root, monkeypatch):
    store = ArtifactStore(s3_root)
    key = artifact_key("leased", "1", {}, {})
    dead = json.dumps({"owner": "dead-host:1", "expires_at": time.time() - 1}).encode()
    assert store.write_if(f"{stage_mod.LOCKS}/{key}.json", dead, None)
    ref = run_stage("leased", "1", lambda ctx: ctx.write_file("x", b"x"), store=store)
    assert not ref["reused"]
    assert not store.exists(f"{stage_mod.LOCKS}/{key}.json")  # released after


def test_a_live_s3_lease_makes_the_other_run_wait(s3_root, monkeypatch):
    monkeypatch.setattr(stage_mod, "WAIT_POLL_S", 0.05)
    store = ArtifactStore(s3_root)
    key = artifact_key("held", "1", {}, {})
    live = json.dumps({"owner": "other:1", "expires_at": time.time() + 60}).encode()
    assert store.write_if(f"{stage_mod.LOCKS}/{key}.json", live, None)
    with pytest.raises(TimeoutError, match="locked by another run"):
        run_stage("held", "1", lambda ctx: ctx.write_file("x", b"x"), store=store, wait_timeout_s=0.3)
    assert not store.exists(f"{key}/{MANIFEST}")


def test_an_incomplete_output_is_recomputed_not_reused(local_root):
    store = ArtifactStore(local_root)
    missing = {"n": 2}

    def compute(ctx):
        ctx.write_file("x", str(missing["n"]).encode())
        ctx.mark_incomplete(missing["n"], "rows failed")

    first = run_stage("partial", "1", compute, store=store)
    assert find_complete(store, first["key"])["incomplete"] == {"rows": 2, "why": "rows failed"}
    missing["n"] = 0
    second = run_stage("partial", "1", compute, store=store)
    assert not second["reused"] and second["fingerprint"] != first["fingerprint"]
    assert run_stage("partial", "1", compute, store=store)["reused"]


_WORKER = """
import os, sys, time
from router_tasks.core import stage
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
stage.WAIT_POLL_S = 0.05
root, log = sys.argv[1], sys.argv[2]
waiting = log + ".waiting"  # created when a process finds the key locked (it then waits)
try_acquire = stage._StageLock.try_acquire

def try_acquire_seen(lock):
    got = try_acquire(lock)
    if not got:
        open(waiting, "a").close()
    return got

stage._StageLock.try_acquire = try_acquire_seen

def compute(ctx):
    with open(log, "a") as fh:
        fh.write("computed\\n")
    # hold the key until the other process has arrived and waits for it, so they overlap
    deadline = time.monotonic() + 60
    while not os.path.exists(waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.write_file("out.bin", b"x")

print(run_stage("two_procs", "1", compute, config={}, store=ArtifactStore(root))["reused"])
"""


def test_two_processes_computing_one_key_compute_once(any_root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    log = tmp_path / "computed.log"
    env = {**os.environ, "PYTHONPATH": repo}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, any_root, str(log)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("computed") == 1 and outs == ["False", "True"]
