"""Gateway benchmark: routing decision time per router kind, gateway overhead against
calling the upstream directly, and requests/s through the gateway.

    python benchmark_scripts/gateway_overhead.py                 # knn, mf, random; 1/16/64 clients
    python benchmark_scripts/gateway_overhead.py --kinds knn ensemble --requests 128

1. Decision time: `predict_quality` + `strong_win_rate` on one new prompt at a time (a
   text no cache holds, so the MiniLM embedding is included), p50/p99 per router kind.
2. Overhead: the same requests sent straight to a scripted upstream that answers after
   `--latency` s, and through `tela serve` (a separate process, traffic log on, model
   `tela-auto`) to that upstream, at 1, 16 and 64 concurrent clients; p50 latency of
   each and the difference. Every request carries a new prompt (embedded for real).
3. Throughput: requests/s with a zero-latency upstream at 64 clients, gateway vs direct.

Routers train on 400 MMLU prompts of the bundled RouteLLM data under our own model names.
Prints one line per figure and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run from a checkout; the scripted upstream lives in tests/

import numpy as np
import pandas as pd

BIG, SMALL = "bench-large", "bench-small"


def train(root: str, kinds: list[str]) -> dict:
    from router_tasks.core.stage import run_stage
    from router_tasks.core.store import ArtifactStore
    from router_tasks.data.routellm import load_benchmark
    from router_tasks.routers.train import train_router

    mm = load_benchmark("mmlu").sample(400, random_state=0)
    rows = [dict(prompt_id=r.prompt_id, prompt=r.prompt, model=m, score=None, correct=bool(q), quality=float(q),
                 source="bench", benchmark="mmlu")
            for r in mm.itertuples() for m, q in ((BIG, r.strong_quality), (SMALL, r.weak_quality))]
    df = pd.DataFrame(rows)
    df["score"] = df["score"].astype("Int64")
    labels = run_stage("labels_fixture", "1", lambda ctx: ctx.write_table(df), store=ArtifactStore(root))
    return {k: train_router(labels, router_type=k, strong_model=BIG, weak_model=SMALL, artifact_root=root)
            for k in kinds}


def fresh(i: int, tag: str) -> str:
    """A prompt no embedding cache holds."""
    return f"[{tag} {i}] Which of the following best explains why the sky appears blue at noon, case {i * 7919}?"


def decision_times(root: str, refs: dict, n: int) -> dict:
    from router_tasks.core.store import ArtifactStore
    from router_tasks.serving.gateway import load_serving_router

    import torch

    torch.set_num_threads(1)  # as the gateway runs it (GatewayConfig.torch_threads)
    out = {}
    for kind, ref in refs.items():
        router = load_serving_router(ref["key"], ArtifactStore(root)).router  # as the gateway loads it
        router.strong_win_rate(["warm up"])
        times = []
        for i in range(n):
            p = fresh(i, f"decide-{kind}")
            t = time.perf_counter()
            q = router.predict_quality([p])
            router.strong_win_rate([p], quality=q)
            times.append(1000 * (time.perf_counter() - t))
        out[kind] = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}
        print(f"decision time {kind:>8}: p50 {out[kind]['p50_ms']:.2f} ms, p99 {out[kind]['p99_ms']:.2f} ms "
              f"(one new prompt per call, embedding included)", flush=True)
    return out


def start_gateway(root: str, models_file: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    tela = str(Path(sys.executable).parent / "tela")
    proc = subprocess.Popen([tela, "--artifact-root", root, "serve", "--models", models_file, "--port", "0",
                             "--cooldown-fails", "1000"], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
            return proc, m.group(1) + "/v1"
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("tela serve did not start")


async def load(url: str, model: str, clients: int, requests: int, tag: str) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker():
            for i in counter:
                body = {"model": model, "messages": [{"role": "user", "content": fresh(i, tag)}], "max_tokens": 16}
                t = time.perf_counter()
                r = await client.post(f"{url}/chat/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                latencies.append(1000 * (time.perf_counter() - t))

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        return latencies, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["knn", "mf", "random"])
    ap.add_argument("--decisions", type=int, default=200, help="single-prompt decisions per router kind")
    ap.add_argument("--latency", type=float, default=0.3, help="scripted upstream latency, seconds")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--requests", type=int, default=0, help="requests per concurrency level (default 4 x clients, >= 32)")
    ap.add_argument("--throughput-requests", type=int, default=1000)
    ap.add_argument("--serve-kind", default="knn",
                    help="router kind the gateway serves (random: the gateway's own overhead, no embedding)")
    args = ap.parse_args()

    from openai_test_server import Faults, Reply, ScriptedOpenAIServer

    from router_tasks.core.store import ArtifactStore

    if args.serve_kind not in args.kinds:
        args.kinds.append(args.serve_kind)
    result = {"latency_s": args.latency, "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/artifacts"
        started = time.time()
        refs = train(root, args.kinds)
        print(f"trained {list(refs)} in {time.time() - started:.1f} s", flush=True)
        result["decision"] = decision_times(root, refs, args.decisions)
        ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": refs[args.serve_kind]})
        result["serve_kind"] = args.serve_kind

        reply = lambda body: Reply(content="ok", prompt_tokens=20, completion_tokens=1)  # noqa: E731
        with ScriptedOpenAIServer(reply, faults=Faults(latency_s=args.latency)) as up:
            models = Path(tmp) / "models.json"
            models.write_text(json.dumps([{"name": n, "model": n, "base_url": up.base_url, "max_retries": 0}
                                          for n in (BIG, SMALL)]))
            proc, gw = start_gateway(root, str(models))
            try:
                result["overhead"] = {}
                for c in args.clients:
                    n = args.requests or max(32, 4 * c)
                    asyncio.run(load(gw, "tela-auto", min(c, 4), 8, f"warm{c}"))
                    direct, _ = asyncio.run(load(up.base_url, BIG, c, n, f"direct{c}"))
                    via, _ = asyncio.run(load(gw, "tela-auto", c, n, f"gw{c}"))
                    d50, g50 = float(np.median(direct)), float(np.median(via))
                    result["overhead"][c] = {"direct_p50_ms": d50, "gateway_p50_ms": g50, "overhead_p50_ms": g50 - d50,
                                             "overhead_pct": 100 * (g50 - d50) / d50,
                                             "gateway_p99_ms": float(np.percentile(via, 99))}
                    print(f"{c:>3} clients: direct p50 {d50:.1f} ms, gateway p50 {g50:.1f} ms -> overhead "
                          f"{g50 - d50:.1f} ms ({100 * (g50 - d50) / d50:.1f}% of the upstream call); "
                          f"gateway p99 {np.percentile(via, 99):.1f} ms", flush=True)
                up.faults = Faults()  # zero latency
                n = args.throughput_requests
                _, t_direct = asyncio.run(load(up.base_url, BIG, 64, n, "tput-direct"))
                _, t_gw = asyncio.run(load(gw, "tela-auto", 64, n, "tput-gw"))
                result["throughput"] = {"gateway_rps": n / t_gw, "direct_rps": n / t_direct}
                print(f"throughput, zero-latency upstream, 64 clients: gateway {n / t_gw:.0f} req/s, "
                      f"direct {n / t_direct:.0f} req/s", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        segs = ArtifactStore(root).list("traffic/")
        rows = sum(len(ArtifactStore(root).read_parquet(k)) for k in segs)
        result["traffic_rows_logged"] = rows
        print(f"traffic log: {rows} rows in {len(segs)} segments", flush=True)
    result["load_average_at_end"] = os.getloadavg()[0]
    print(f"load average: {result['load_average_at_start']:.1f} at start, {result['load_average_at_end']:.1f} at end")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
