"""Labeling at scale: generate + judge over N prompts x 2 models, part by part, as the DAG maps them.

    .venv/bin/python benchmark_scripts/labeling_scale.py --prompts 10000 --latency 0      # no latency
    .venv/bin/python benchmark_scripts/labeling_scale.py --prompts 10000 --latency 0.2    # C=64, L=0.2 s
    nice -n 10 .venv/bin/python benchmark_scripts/labeling_scale.py --prompts 100000 --latency 0.2

The server is the scripted OpenAI-compatible test server (`tests/openai_test_server.py`) in
this process, answering every request after a fixed latency L. Every part (`generate_part`
per shard x model, `judge_part` per shard) runs in a fresh child process, one at a time (one
pool slot), with `concurrency` C requests in flight, so each part's figures are its own:
wall time, requests/s, the fraction of the concurrency limit it kept busy
(requests x L / (wall x C); the goal is >= 0.9 at C = 64, L = 0.2 s), its peak RSS (VmHWM),
its CPU time per request (client only: the server runs in the parent), and the bytes it
read from the request cache.

Then two re-runs: (1) the same inputs: every part is reused, 0 requests; (2) the same
prompts under another dataset name (new artifact keys, the same requests): every part is
recomputed from the request cache, 0 requests, and the cache bytes each part reads show
whether reading is bounded by the shard (compare a 10k and a 100k run at the same
--shard-size). Prints figures and a final JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tests.openai_test_server import Faults, ScriptedOpenAIServer, last_user_text  # noqa: E402

MODELS = ("model-a", "model-b")


def rule(body: dict) -> str:
    text = last_user_text(body)
    if "[[n]]" in text:  # the judge's rubric asks for [[n]]
        return f"Fair answer.\n[[{len(text) % 5 + 1}]]"
    return f"{body['model']} answers: {text[:60]} ... #### {len(text)}"


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_part(kind: str, kwargs: dict) -> dict:
    """In a child process: one part; its ref, stats and this process's own measurements."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    import openai  # noqa: F401 - imported before the clock starts: a worker process has it loaded already

    from router_tasks.core.stage import read_manifest
    from router_tasks.core.store import ArtifactStore
    from router_tasks.labeling.generate import generate_part
    from router_tasks.labeling.judge import judge_part

    cpu0, t0 = time.process_time(), time.monotonic()
    ref = (generate_part if kind == "generate" else judge_part)(**kwargs)
    wall = time.monotonic() - t0
    stats = read_manifest(ArtifactStore(kwargs["artifact_root"]), ref)["stats"]
    return {
        "ref": ref,
        "wall": wall,
        "cpu": time.process_time() - cpu0,
        "rss_mb": _peak_rss_mb(),
        "calls": stats.get("calls", 0),
        "cached": stats.get("cached", 0),
        "cache_bytes_read": stats.get("cache_bytes_read", 0),
        "cache_files_read": stats.get("cache_files_read", 0),
    }


def _parts(pool, kind: str, jobs: list[dict]) -> list[dict]:
    return [pool.submit(_run_part, kind, j).result() for j in jobs]


def run_round(root: str, prompts: dict, srv, args, label: str) -> dict:
    from router_tasks.labeling.generate import combine_answers, plan_generation
    from router_tasks.labeling.judge import combine_judgements, plan_judging

    models = [
        {
            "name": m,
            "model": m,
            "base_url": srv.base_url,
            "concurrency": args.concurrency,
            "max_retries": 2,
            "max_tokens": 64,
        }
        for m in MODELS
    ]
    judge = {
        "name": "judge",
        "model": "judge-1",
        "base_url": srv.base_url,
        "concurrency": args.concurrency,
        "max_retries": 2,
    }
    ctx = mp.get_context("spawn")
    before = srv.count()
    t0 = time.monotonic()
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        gen_jobs = [
            {
                "prompts": prompts,
                "model": p["model"],
                "shard": p["shard"],
                "artifact_root": root,
                "batch_rows": args.batch_rows,
            }
            for p in plan_generation(prompts, models=models, artifact_root=root)
        ]
        gen = _parts(pool, "generate", gen_jobs)
        answers = combine_answers(
            prompts, [g["ref"] for g in gen], models=models, artifact_root=root, thresholds={"min_kept_share": 0.0}
        )
        judge_jobs = [
            {
                "prompts": prompts,
                "answers": answers,
                "shard": p["shard"],
                "judge": judge,
                "artifact_root": root,
                "batch_rows": args.batch_rows,
            }
            for p in plan_judging(prompts, artifact_root=root)
        ]
        jud = _parts(pool, "judge", judge_jobs)
        combine_judgements(
            prompts,
            answers,
            [j["ref"] for j in jud],
            judge=judge,
            artifact_root=root,
            thresholds={"min_kept_share": 0.0},
        )
    wall = time.monotonic() - t0
    requests = srv.count() - before
    parts = gen + jud
    computed = [p for p in parts if not p["ref"]["reused"]]
    out = {
        "round": label,
        "wall_s": round(wall, 1),
        "requests": requests,
        "parts": len(parts),
        "parts_reused": len(parts) - len(computed),
    }
    if requests:
        out["req_per_s"] = round(requests / wall, 1)
    if computed:
        busy = [p for p in computed if p["calls"]]
        if busy:
            if args.latency > 0:
                fr = [p["calls"] * args.latency / (p["wall"] * args.concurrency) for p in busy]
                out["concurrency_fraction_per_part"] = {"mean": round(statistics.mean(fr), 3), "min": round(min(fr), 3)}
            out["part_req_per_s"] = round(statistics.mean(p["calls"] / p["wall"] for p in busy), 1)
            out["client_cpu_ms_per_request"] = round(
                1000 * sum(p["cpu"] for p in busy) / sum(p["calls"] for p in busy), 3
            )
        out["peak_rss_mb_per_part"] = {
            "max": round(max(p["rss_mb"] for p in computed), 1),
            "mean": round(statistics.mean(p["rss_mb"] for p in computed), 1),
        }
        out["cache_bytes_read_per_part"] = {
            "max": max(p["cache_bytes_read"] for p in computed),
            "mean": int(statistics.mean(p["cache_bytes_read"] for p in computed)),
        }
        out["cache_files_read_per_part_max"] = max(p["cache_files_read"] for p in computed)
        out["part_wall_s"] = {
            "mean": round(statistics.mean(p["wall"] for p in computed), 2),
            "max": round(max(p["wall"] for p in computed), 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=5_000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--batch-rows", type=int, default=2_000)
    ap.add_argument("--root", default=None, help="artifact root (default: a temporary folder)")
    args = ap.parse_args()

    from router_tasks.data.ingest import ingest_prompts

    shards = max(1, args.prompts // args.shard_size)
    tmp = tempfile.TemporaryDirectory(prefix="tela-scale-")
    root = args.root or tmp.name + "/artifacts"
    src = Path(tmp.name) / "prompts.jsonl"
    with src.open("w") as fh:
        for i in range(args.prompts):
            fh.write(
                json.dumps(
                    {
                        "prompt": f"Question {i}: explain topic {i % 977} at depth {i % 13}.",
                        "reference_answer": f"A reference for topic {i % 977}.",
                    }
                )
                + "\n"
            )
    t0 = time.monotonic()
    prompts = ingest_prompts(str(src), shards=shards, artifact_root=root, thresholds={"min_kept_share": 0.0})
    ingest_s = time.monotonic() - t0
    results = {
        "prompts": args.prompts,
        "shards": shards,
        "shard_size": args.shard_size,
        "models": len(MODELS),
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "ingest_s": round(ingest_s, 1),
    }
    print(f"ingest: {args.prompts} prompts in {shards} shards, {ingest_s:.1f} s", flush=True)
    with ScriptedOpenAIServer(rule, faults=Faults(latency_s=args.latency)) as srv:
        results["first"] = run_round(root, prompts, srv, args, "first run")
        print(json.dumps(results["first"]), flush=True)
        results["rerun_same"] = run_round(root, prompts, srv, args, "re-run, same inputs")
        print(json.dumps(results["rerun_same"]), flush=True)
        renamed = ingest_prompts(
            str(src), shards=shards, dataset="renamed", artifact_root=root, thresholds={"min_kept_share": 0.0}
        )
        results["rerun_from_cache"] = run_round(root, renamed, srv, args, "re-run, new keys, all from the cache")
        print(json.dumps(results["rerun_from_cache"]), flush=True)
        results["server_max_in_flight"] = srv.max_in_flight
    print(json.dumps(results))
    tmp.cleanup()


if __name__ == "__main__":
    main()
