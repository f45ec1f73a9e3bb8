"""Labeling throughput of the product's chat path against a fixed-latency OpenAI-compatible server.

    .venv/bin/python benchmark_scripts/labeling_throughput.py                     # 2,000 prompts, L=0.2 s, C=16 (~75 s)
    .venv/bin/python benchmark_scripts/labeling_throughput.py --prompts 500 --latency 0.1 --concurrency 32

Every prompt goes through `router_tasks.labeling.llm_client` exactly as the generate and judge
stages send them: `Endpoint.from_dict`, `open_endpoint`, `chat_many` (a thread pool of
`concurrency` workers over one `openai` client). The server is the scripted test server
(`tests/openai_test_server.py`, in this process) answering every request after a fixed
latency L, so the ceiling is C/L replies/s; the goal is >= 0.9 of it with the server
never seeing more than C requests at once.

Scenarios, each on a fresh server:
  (a) no faults;
  (b) 10% of attempts answered 429 with `retry-after-ms: 50` (the client retries them);
  (c) a naive sequential loop (one `client.chat` after another) over --baseline-prompts
      prompts, its time extrapolated to --prompts: the ratios are against it.

CPU ms/request is the whole process (client and the in-process server together) over
requests at the server; with --server-process the server runs in a child process, as a
remote API would, and the client's CPU is measured alone. Prints figures per scenario
and a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from router_tasks.core.endpoints import Endpoint  # noqa: E402
from router_tasks.labeling.llm_client import chat_many, open_endpoint  # noqa: E402
from tests.openai_test_server import Faults, ScriptedOpenAIServer, last_user_text  # noqa: E402


def conversations(n: int, tag: str) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"[{tag}] Question {i}: what is {i} times {i % 7 + 2}? Explain briefly."}]
        for i in range(n)
    ]


def rule(body: dict) -> str:
    return f"The answer to '{last_user_text(body)[:40]}' is below.\n#### 42"


def _serve(faults: Faults, conn) -> None:
    """--server-process: the server in a child process; sends its URL, then its stats and CPU seconds."""
    with ScriptedOpenAIServer(rule, faults=faults) as srv:
        conn.send(srv.base_url)
        conn.recv()  # "reset": the client is about to start
        cpu0 = time.process_time()
        conn.recv()  # "stop"
        conn.send((srv.stats(), time.process_time() - cpu0))


@contextlib.contextmanager
def server(faults: Faults, in_process: bool):
    """Yields (base_url, start(), finish() -> (stats, server CPU seconds or None))."""
    if in_process:
        with ScriptedOpenAIServer(rule, faults=faults) as srv:
            yield srv.base_url, lambda: None, lambda: (srv.stats(), None)
        return
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(faults, child), daemon=True)
    proc.start()
    try:
        url = parent.recv()

        def finish():
            parent.send("stop")
            return parent.recv()

        yield url, lambda: parent.send("reset"), finish
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


def run(
    name: str,
    faults: Faults,
    n: int,
    concurrency: int,
    max_retries: int,
    sequential: bool = False,
    in_process: bool = True,
) -> dict:
    convs = conversations(n, name)
    with server(faults, in_process) as (url, start, finish):
        ep = Endpoint.from_dict(
            {
                "name": "bench",
                "model": "bench-model",
                "base_url": url,
                "concurrency": 1 if sequential else concurrency,
                "max_retries": max_retries,
                "timeout_s": 60,
            }
        )
        with open_endpoint(ep) as client:
            start()
            cpu0, t0 = time.process_time(), time.perf_counter()
            if sequential:
                results = [client.chat(conv) for conv in convs]
            else:
                results = chat_many(client, convs)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        stats, server_cpu = finish()
    ok = sum(r.error is None for r in results)
    lat = sorted(r.latency_s for r in results)
    return {
        "name": name,
        "prompts": n,
        "wall_s": wall,
        "ok": ok,
        "errors": n - ok,
        "rate": ok / wall,
        "requests": stats["requests"],
        "max_in_flight": stats["max_in_flight"],
        "n429": stats["statuses"].get(429, 0),
        "resent": stats["resent_after_success"],
        "cpu_ms_per_req": 1000 * cpu / max(stats["requests"], 1),
        "cpu_util": cpu / wall,
        "server_cpu_ms_per_req": None if server_cpu is None else 1000 * server_cpu / max(stats["requests"], 1),
        "p50": lat[len(lat) // 2],
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "mean_lat": sum(lat) / n,
        # share of the C worker slots' time spent inside client.chat (the rest: gaps between calls)
        "slot_busy": sum(lat) / ((1 if sequential else concurrency) * wall),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds (L)")
    ap.add_argument("--concurrency", type=int, default=16, help="endpoint concurrency cap (C)")
    ap.add_argument("--baseline-prompts", type=int, default=100, help="prompts for the sequential baseline")
    ap.add_argument("--rate-429", type=float, default=0.1)
    ap.add_argument("--retry-after-ms", type=float, default=50)
    ap.add_argument("--max-retries", type=int, default=5)
    ap.add_argument(
        "--server-process",
        action="store_true",
        help="run the server in a child process (as a remote API would be): then CPU ms/request "
        "is the client's alone, and the server's is printed apart",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    L, C, N = args.latency, args.concurrency, args.prompts
    limit = C / L
    load = os.getloadavg()
    print(f"# Labeling throughput ({platform.node()}, {os.cpu_count()} CPUs, load average at start {load[0]:.2f})")
    print(
        f"latency L={L} s, concurrency C={C}: limit C/L = {limit:.1f} replies/s; {N} prompts; "
        f"max_retries={args.max_retries}; server {'in a child process' if args.server_process else 'in process'}"
    )

    rows = []
    scenarios = [
        ("(a) no faults", Faults(latency_s=L), N, False),
        (
            f"(b) {args.rate_429:.0%} 429, retry-after-ms {args.retry_after_ms:g}",
            Faults(latency_s=L, rate_429=args.rate_429, retry_after_ms=args.retry_after_ms),
            N,
            False,
        ),
        (f"(c) sequential loop ({args.baseline_prompts} prompts)", Faults(latency_s=L), args.baseline_prompts, True),
    ]
    for name, faults, n, seq in scenarios:
        r = run(name, faults, n, C, args.max_retries, sequential=seq, in_process=not args.server_process)
        rows.append(r)
        print(f"\n{name}")
        print(f"  wall {r['wall_s']:.2f} s for {n} prompts; {r['ok']} replies, {r['errors']} errors")
        print(
            f"  {r['rate']:.2f} successful replies/s = {r['rate'] / limit:.3f} of C/L"
            if not seq
            else f"  {r['rate']:.2f} successful replies/s; extrapolated to {N} prompts: {N / r['rate']:.0f} s"
        )
        print(
            f"  server: {r['requests']} requests, max in flight {r['max_in_flight']} (cap {C if not seq else 1}), "
            f"{r['n429']} x 429, {r['resent']} resent after success"
        )
        print(
            f"  client latency p50 {r['p50']:.3f} s, p99 {r['p99']:.3f} s; "
            f"CPU {r['cpu_ms_per_req']:.2f} ms/request ({r['cpu_util']:.0%} of one core)"
            + (
                ""
                if r["server_cpu_ms_per_req"] is None
                else f", client only; server process {r['server_cpu_ms_per_req']:.2f} ms/request"
            )
        )
        print(
            f"  where the time goes: mean time in client.chat {r['mean_lat']:.3f} s (L={L}: "
            f"{L / r['mean_lat']:.3f} of it is the server's latency); worker slots busy {r['slot_busy']:.3f} "
            f"of the wall time"
        )
        if not seq and r["max_in_flight"] > C:
            print(f"  !! max in flight {r['max_in_flight']} exceeds the cap {C}")

    base = rows[-1]["rate"]
    print(
        f"\n## Labeling throughput: L={L} s, C={C}, limit {limit:.0f} replies/s "
        f"(load average at end {os.getloadavg()[0]:.2f})\n"
    )
    cpu_col = "client CPU ms/request" if args.server_process else "CPU ms/request (client + server)"
    print(
        "| scenario | prompts | wall (s) | replies/s | fraction of C/L | x sequential | max in flight "
        f"| requests at server | 429s | errors | {cpu_col} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seq = r is rows[-1]
        wall = f"{r['wall_s']:.1f}" + (f" (→ {N / r['rate']:.0f} for {N}, extrapolated)" if seq else "")
        print(
            f"| {r['name']} | {r['prompts']} | {wall} | {r['rate']:.1f} | {r['rate'] / limit:.3f} "
            f"| {r['rate'] / base:.1f} | {r['max_in_flight']} | {r['requests']} | {r['n429']} "
            f"| {r['errors']} | {r['cpu_ms_per_req']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
