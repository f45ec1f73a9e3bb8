"""Gateway benchmark: what `tela serve` adds to a call, against calling the upstream
directly and against LiteLLM's proxy in front of the same upstream, in one run.

    python benchmark_scripts/gateway_bench.py                       # trains two champions, all figures
    python benchmark_scripts/gateway_bench.py --no-litellm --rss-requests 2000
    python benchmark_scripts/gateway_bench.py --artifact-root ROOT --router fast=stages/train/<key>

Prints, in one run:
1. decision time p50/p99 of each router on one new prompt of 16, 128 and 512 tokens
   (MiniLM word pieces), loaded as the gateway loads it, torch on one thread;
2. per champion, at 1/16/64 clients: direct (the upstream itself), passthrough (an
   upstream's name as model: the gateway unrouted) and routed (`tela-auto@0.5`) p50/p99
   latency and req/s, each block measured back to back;
3. the same for LiteLLM's proxy (`litellm[proxy]` in a virtualenv this script creates
   under ~/.cache/tela/bench, with a master key; a benchmark-only tool, never a product
   dependency), measured with its own direct baseline;
4. RSS of each server before and after `--rss-requests` requests with new prompts, after a
   warm-up (gateway: routed; LiteLLM: its passthrough);
5. the goals, each PASS or MISS.

The world: an upstream that answers every chat request after 50 ms (`--latency`), in its
own process (uvicorn, a minimal ASGI app); `tela serve --no-auth` in its own process with
its traffic log on; a load generator (aiohttp, light on CPU) in this process sending a new
40-word prompt per request on keep-alive connections. All of it shares this machine's
cores: read the figures with the load average printed at the start and the end.

Champions (unless `--router` gives some): trained by the product's own CLI, `tela train`
on a labels file of the bundled RouteLLM MMLU results under our own model names
(bench-large / bench-small), as a team would train on its labels file: the default
`ensemble` (MiniLM) and `random` (no embedding: the gateway's own cost); each calibrated
with `tela calibrate --share 0.5`. Any router artifact (a new representation's) runs the
same way with `--router LABEL=KEY`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

BIG, SMALL = "bench-large", "bench-small"
PY = sys.executable
TELA = str(Path(sys.executable).parent / "tela")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tela" / "bench"
LITELLM_SPEC = "litellm[proxy]==1.108.7"
MASTER_KEY = "sk-bench-master-key"
WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue side "
    "kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "explain describe compare prove compute list summarize translate write improve check"
).split()


# ---- the upstream, in its own process --------------------------------------------------


def upstream_main(port: int, latency: float) -> None:
    import uvicorn

    reply = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(latency)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 300, headers=None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} in {timeout:.0f} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20


def tela(root: str, *args: str) -> dict:
    out = subprocess.run([TELA, "--artifact-root", root, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"tela {args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


# ---- champions -------------------------------------------------------------------------


def train_champions(root: str, kinds: list[str], n: int, tmp: Path) -> dict[str, str]:
    """`tela train` on bundled MMLU labels under our names, `tela calibrate --share 0.5`; {kind: key}."""
    import pandas as pd

    from router_tasks.data.routellm import load_benchmark

    mm = load_benchmark("mmlu")
    mm = mm[~mm["holdout"]].sample(n, random_state=0)
    labels = pd.DataFrame(
        [
            {"prompt": r.prompt, "model": m, "quality": float(q)}
            for r in mm.itertuples()
            for m, q in ((BIG, r.strong_quality), (SMALL, r.weak_quality))
        ]
    )
    labels_file, calib_file = tmp / "labels.csv", tmp / "calibration.jsonl"
    labels.to_csv(labels_file, index=False)
    load_benchmark("mmlu").query("holdout").head(400)[["prompt"]].to_json(calib_file, orient="records", lines=True)
    keys = {}
    for label in kinds:
        started = time.time()
        kind, _, representation = label.partition(":")  # "ensemble:minilm-static": that representation
        params = ["--params", json.dumps({"representation": representation})] if representation else []
        ref = tela(
            root,
            "train",
            "--labels",
            str(labels_file),
            "--router-type",
            kind,
            "--strong-model",
            BIG,
            "--weak-model",
            SMALL,
            *params,
        )
        tela(root, "calibrate", "--router", ref["key"], "--input", str(calib_file), "--share", "0.5")
        keys[label] = ref["key"]
        print(f"trained and calibrated {label}: {ref['key']} ({time.time() - started:.0f} s)", flush=True)
    return keys


def ensure_calibrated(root: str, key: str, tmp: Path) -> None:
    from router_tasks.core.store import ArtifactStore
    from router_tasks.data.routellm import load_benchmark
    from router_tasks.serving.decisions import latest_calibration

    if latest_calibration(ArtifactStore(root), key) is None:
        calib = tmp / "calibration.jsonl"
        load_benchmark("mmlu").query("holdout").head(400)[["prompt"]].to_json(calib, orient="records", lines=True)
        tela(root, "calibrate", "--router", key, "--input", str(calib), "--share", "0.5")


def router_pair(root: str, key: str) -> tuple[str, str, str | None]:
    from router_tasks.core.store import ArtifactStore

    meta = ArtifactStore(root).read_json(f"{key}/router.json")
    return meta["strong_model"], meta["weak_model"], meta.get("kind")


# ---- load --------------------------------------------------------------------------------


def new_prompt(i: int, tag: str, words: int = 40) -> str:
    rng = random.Random(f"{tag}:{i}")
    return " ".join(rng.choice(WORDS) for _ in range(words - 2)) + f" case {tag}-{i}?"


async def load(url: str, model: str, clients: int, n: int, tag: str, headers: dict | None = None) -> dict:
    """`n` requests by `clients` concurrent clients, each a new prompt; latency percentiles and req/s."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    hdrs = {"content-type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def client():
            nonlocal errors
            while (i := next(counter)) < n:
                body = json.dumps(
                    {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": new_prompt(i, tag)}]}
                )
                t = time.perf_counter()
                async with session.post(url, data=body, headers=hdrs) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        if errors == 1:
                            print(
                                f"  first error from {url} ({model}): HTTP {r.status} {(await r.text())[:200]}",
                                flush=True,
                            )
                latencies.append(1000 * (time.perf_counter() - t))

        started = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(clients)])
        wall = time.perf_counter() - started
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "rps": n / wall,
        "n": n,
        "errors": errors,
    }


def measure(url: str, model: str, clients: int, n: int, tag: str, headers: dict | None = None) -> dict:
    asyncio.run(load(url, model, clients, max(2 * clients, 16), f"warm-{tag}", headers))
    return asyncio.run(load(url, model, clients, n, tag, headers))


def requests_for(clients: int, args) -> int:
    return max(args.min_requests, args.requests_per_client * clients)


def rss_run(pid: int, url: str, model: str, n: int, tag: str, headers: dict | None = None) -> dict:
    asyncio.run(load(url, model, 16, 1000, f"rss-warm-{tag}", headers))
    before = rss_mb(pid)
    started = time.time()
    done = asyncio.run(load(url, model, 16, n, f"rss-{tag}", headers))
    after = rss_mb(pid)
    print(
        f"  RSS {before:.0f} MB -> {after:.0f} MB after {n} requests with new prompts "
        f"({after - before:+.1f} MB, {time.time() - started:.0f} s, {done['errors']} errors)",
        flush=True,
    )
    return {"before_mb": before, "after_mb": after, "growth_mb": after - before, "requests": n}


# ---- decision time -----------------------------------------------------------------------


def prompts_of_tokens(tokens: int, count: int, tag: str) -> list[str]:
    """`count` new prompts of exactly `tokens` MiniLM word pieces (no special tokens)."""
    from transformers import AutoTokenizer

    from router_tasks.routers.embeddings import model_path

    tok = AutoTokenizer.from_pretrained(model_path())
    tok.model_max_length = 10**6  # only counting here (the model reads its first 256)
    out = []
    for i in range(count):
        rng = random.Random(f"{tag}:{tokens}:{i}")
        ids = tok(" ".join(rng.choice(WORDS) for _ in range(tokens + 8)) + f" case {i}", add_special_tokens=False)[
            "input_ids"
        ]
        out.append(tok.decode(ids[-tokens:]) if len(ids) >= tokens else tok.decode(ids))
    return out


def decision_times(root: str, keys: dict[str, str], n: int) -> dict:
    import torch

    from router_tasks.core.store import ArtifactStore
    from router_tasks.serving.decisions import load_serving_router

    torch.set_num_threads(1)  # as the gateway runs it (GatewayConfig.torch_threads)
    out = {}
    for label, key in keys.items():
        loaded = load_serving_router(key, ArtifactStore(root))
        loaded.predict(["warm up"])
        out[label] = {"representation": loaded.representation}
        for tokens in (16, 128, 512):
            times = []
            for p in prompts_of_tokens(tokens, n, label):
                t = time.perf_counter()
                loaded.predict([p])
                times.append(1000 * (time.perf_counter() - t))
            out[label][tokens] = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}
        print(
            f"decision time {label} (representation {loaded.representation}): "
            + ", ".join(
                f"{t} tokens p50 {out[label][t]['p50_ms']:.2f} / p99 {out[label][t]['p99_ms']:.2f} ms"
                for t in (16, 128, 512)
            ),
            flush=True,
        )
    return out


# ---- servers -----------------------------------------------------------------------------


def start_upstream(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([PY, __file__, "--serve-upstream", str(port), "--latency", str(latency)])
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{url}/chat/completions", json={}, timeout=2)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the upstream did not start")


def start_gateway(
    root: str, key: str, upstream: str, names: tuple[str, str], tmp: Path
) -> tuple[subprocess.Popen, str]:
    models = tmp / f"models-{key.rsplit('/', 1)[-1]}.json"
    models.write_text(
        json.dumps(
            [
                {
                    "name": n,
                    "model": n,
                    "base_url": upstream,
                    "max_retries": 0,
                    "price_input_per_m": 1.0,
                    "price_output_per_m": 2.0,
                }
                for n in names
            ]
        )
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [
            TELA,
            "--artifact-root",
            root,
            "serve",
            "--models",
            str(models),
            "--router",
            key,
            "--no-auth",
            "--port",
            str(port),
            "--cooldown-fails",
            "100000",
        ],
        env=env,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc, "tela serve")
    return proc, f"http://127.0.0.1:{port}/v1"


def litellm_bin() -> Path:
    """The `litellm` CLI in a virtualenv of its own under CACHE (created on first use)."""
    venv = CACHE / "litellm-venv"
    exe, marker = venv / "bin" / "litellm", venv / "tela-bench-spec"
    if not exe.exists() or not marker.exists() or marker.read_text() != LITELLM_SPEC:
        print(f"installing {LITELLM_SPEC} into {venv} (a benchmark-only tool)", flush=True)
        if not (venv / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True)
        marker.write_text(LITELLM_SPEC)
    return exe


def start_litellm(upstream: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    exe = litellm_bin()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        + "".join(
            f"  - model_name: {n}\n    litellm_params:\n      model: openai/{n}\n      api_base: {upstream}\n"
            f"      api_key: sk-upstream\n"
            for n in (BIG, SMALL)
        )
        + f"general_settings:\n  master_key: {MASTER_KEY}\nlitellm_settings:\n  telemetry: false\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    proc = subprocess.Popen(
        [str(exe), "--config", str(cfg), "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, "litellm", 600)
    return proc, f"http://127.0.0.1:{port}/v1"


# ---- main --------------------------------------------------------------------------------


def print_block(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}\n| clients | direct p50 / p99 (req/s) | " + " | ".join(h for h, _ in rows[0][2]) + " |")
    print("|---:|---:|" + "---:|" * len(rows[0][2]))
    for clients, d, cols in rows:
        cells = [f"+{c['p50_ms'] - d['p50_ms']:.1f} ms / {c['p99_ms']:.0f} ms ({c['rps']:.0f})" for _, c in cols]
        print(f"| {clients} | {d['p50_ms']:.1f} / {d['p99_ms']:.0f} ms ({d['rps']:.0f}) | " + " | ".join(cells) + " |")


def goals(result: dict) -> list[tuple[str, bool, str]]:
    out = []
    lite = result.get("litellm", {}).get("levels", {})
    for label, run in result["gateway"].items():
        levels = run["levels"]
        for c in ("1", "16"):
            if c in levels:
                o = levels[c]["routed"]["p50_ms"] - levels[c]["direct"]["p50_ms"]
                out.append((f"{label}: routed p50 overhead at {c} clients <= 5 ms", o <= 5, f"{o:.1f} ms"))
        if "64" in levels:
            ratio = levels["64"]["routed"]["rps"] / levels["64"]["passthrough"]["rps"]
            out.append((f"{label}: routed req/s >= 0.8 x passthrough at 64 clients", ratio >= 0.8, f"{ratio:.2f}x"))
        for c, lv in lite.items():
            if c in levels:
                ours = levels[c]["routed"]["p50_ms"] - levels[c]["direct"]["p50_ms"]
                theirs = lv["litellm"]["p50_ms"] - lv["direct"]["p50_ms"]
                out.append(
                    (
                        f"{label}: routed overhead below LiteLLM passthrough's at {c} clients",
                        ours < theirs,
                        f"{ours:.1f} vs {theirs:.1f} ms",
                    )
                )
        if "rss" in run:
            g = run["rss"]["growth_mb"]
            out.append(
                (f"{label}: RSS growth <= 30 MB over {run['rss']['requests']} requests", g <= 30, f"{g:+.1f} MB")
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--router",
        action="append",
        default=[],
        metavar="LABEL=KEY",
        help="a router artifact (in --artifact-root) to serve; repeatable. Default: train ensemble and random",
    )
    ap.add_argument("--artifact-root", help="where --router artifacts live (default: a temporary root)")
    ap.add_argument(
        "--kinds",
        nargs="+",
        default=["random", "ensemble"],
        help="router kinds to train without --router; KIND:REPRESENTATION trains on that "
        "representation (e.g. ensemble:minilm-static)",
    )
    ap.add_argument("--train-prompts", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05, help="upstream answer time, seconds")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--requests-per-client", type=int, default=40)
    ap.add_argument("--min-requests", type=int, default=200)
    ap.add_argument("--decisions", type=int, default=200, help="single-prompt decisions per prompt length")
    ap.add_argument("--rss-requests", type=int, default=20_000)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        upstream_main(args.serve_upstream, args.latency)
        return 0

    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    result: dict = {
        "load_average_at_start": os.getloadavg(),
        "latency_s": args.latency,
        "cores": os.cpu_count(),
        "gateway": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        root = args.artifact_root or str(tmp / "artifacts")
        if args.router:
            keys = dict(r.split("=", 1) for r in args.router)
            for key in keys.values():
                ensure_calibrated(root, key, tmp)
        else:
            keys = train_champions(root, args.kinds, args.train_prompts, tmp)
        result["decision"] = decision_times(root, keys, args.decisions)

        upstream, up_url = start_upstream(args.latency)
        try:
            for label, key in keys.items():
                strong, weak, kind = router_pair(root, key)
                proc, gw = start_gateway(root, key, up_url, (strong, weak), tmp)
                run: dict = {"key": key, "kind": kind, "levels": {}}
                try:
                    rows = []
                    for c in args.clients:
                        n = requests_for(c, args)
                        lv = {
                            "direct": measure(f"{up_url}/chat/completions", strong, c, n, f"d{label}{c}"),
                            "passthrough": measure(f"{gw}/chat/completions", weak, c, n, f"p{label}{c}"),
                            "routed": measure(f"{gw}/chat/completions", "tela-auto@0.5", c, n, f"r{label}{c}"),
                        }
                        run["levels"][str(c)] = lv
                        rows.append(
                            (
                                c,
                                lv["direct"],
                                [("passthrough", lv["passthrough"]), ("routed tela-auto@0.5", lv["routed"])],
                            )
                        )
                        print(f"  {label} {c} clients done", flush=True)
                    print_block(f"tela serve, {label} champion ({kind}; overhead over direct p50, p99, req/s)", rows)
                    if args.rss_requests:
                        run["rss"] = rss_run(
                            proc.pid, f"{gw}/chat/completions", "tela-auto@0.5", args.rss_requests, label
                        )
                finally:
                    stop(proc)
                result["gateway"][label] = run

            if not args.no_litellm:
                proc, lite = start_litellm(up_url, tmp)
                headers = {"Authorization": f"Bearer {MASTER_KEY}"}
                result["litellm"] = {"spec": LITELLM_SPEC, "levels": {}}
                try:
                    rows = []
                    for c in args.clients:
                        n = requests_for(c, args)
                        lv = {
                            "direct": measure(f"{up_url}/chat/completions", BIG, c, n, f"ld{c}"),
                            "litellm": measure(f"{lite}/chat/completions", BIG, c, n, f"l{c}", headers),
                        }
                        result["litellm"]["levels"][str(c)] = lv
                        rows.append((c, lv["direct"], [("LiteLLM passthrough", lv["litellm"])]))
                        print(f"  litellm {c} clients done", flush=True)
                    print_block(f"LiteLLM proxy ({LITELLM_SPEC}, one process, master key)", rows)
                    if args.rss_requests:
                        result["litellm"]["rss"] = rss_run(
                            proc.pid, f"{lite}/chat/completions", BIG, args.rss_requests, "litellm", headers
                        )
                finally:
                    stop(proc)
        finally:
            stop(upstream)

    print(
        "\ndecision time, one new prompt (ms, p50 / p99)\n| router | representation | 16 tokens | 128 tokens "
        "| 512 tokens |\n|---|---|---:|---:|---:|"
    )
    for label, d in result["decision"].items():
        print(
            f"| {label} | {d['representation']} | "
            + " | ".join(f"{d[t]['p50_ms']:.2f} / {d[t]['p99_ms']:.2f}" for t in (16, 128, 512))
            + " |"
        )
    print(
        "\nRSS before and after the requests with new prompts\n"
        "| server | before | after | growth |\n|---|---:|---:|---:|"
    )
    for label, run in result["gateway"].items():
        if "rss" in run:
            r = run["rss"]
            print(
                f"| tela serve ({label}) | {r['before_mb']:.0f} MB | "
                f"{r['after_mb']:.0f} MB | {r['growth_mb']:+.1f} MB |"
            )
    if "rss" in result.get("litellm", {}):
        r = result["litellm"]["rss"]
        print(f"| LiteLLM proxy | {r['before_mb']:.0f} MB | {r['after_mb']:.0f} MB | {r['growth_mb']:+.1f} MB |")
    print("\ngoals")
    result["goals"] = []
    for what, ok, figure in goals(result):
        result["goals"].append({"goal": what, "met": ok, "figure": figure})
        print(f"  {'PASS' if ok else 'MISS'}  {what}: {figure}")
    result["load_average_at_end"] = os.getloadavg()
    print(
        f"\nload average: {result['load_average_at_start'][0]:.2f} at start, "
        f"{result['load_average_at_end'][0]:.2f} at end (figures taken above 1.5 are provisional)"
    )
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
