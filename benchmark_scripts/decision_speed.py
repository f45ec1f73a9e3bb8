"""Routing decision time on one core, by prompt length and representation, in-process.

    .venv/bin/python benchmark_scripts/decision_speed.py
    .venv/bin/python benchmark_scripts/decision_speed.py --artifact-root /tmp/rq --calls 500

A routing decision is what the gateway does for a new prompt: the prompt's vector (its
representation), the router's predicted quality of each model, and `strong_win_rate`.
Each router is trained by the train stage on the bundled RouteLLM MMLU + GSM8K labels
(`router_quality.labels_artifact`: the same artifacts, so `--artifact-root` shared with
router_quality.py reuses them), loaded back with `load_router` as `tela serve` loads it,
and given an embedder with no vector cache, so every call embeds its prompt afresh.

Prompts: bundled MMLU and GSM8K questions concatenated and cut to exactly 16, 128 and
512 MiniLM tokens; every call gets a prompt no earlier call saw. One thread for torch
and BLAS (`--pin` also binds the process to one CPU). Per cell: p50 and p99 of the whole
decision, and p50 of its two halves (the representation alone; the router alone on a
precomputed vector). "old path" times the router's scoring as it was before the compiled
path (the part-by-part reference and a DataFrame): the same numbers, slower.

Figures move with the machine's load: the load average is printed at start and end, and
every row of one run comes from the same process (ratios against MiniLM hold better
than absolute times on a busy machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

from router_quality import labels_artifact
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.routers import EmbeddingRouter, load_router
from router_tasks.routers.embeddings import Embedder, model_path
from router_tasks.training.train import train_router

LENGTHS = (16, 128, 512)


def make_prompts(texts: list[str], tokens: int, n: int, seed: int) -> list[str]:
    """`n` distinct prompts of exactly `tokens` MiniLM tokens (no special tokens), each
    bundled questions joined from a different starting point."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_path(), "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    order = np.random.default_rng(seed).permutation(len(texts))
    out: list[str] = []
    for start in range(n):
        parts, i = [], start
        while True:
            parts.append(texts[order[i % len(order)]])
            joined = "\n\n".join(parts)
            enc = tok.encode(joined, add_special_tokens=False)
            if len(enc.ids) >= tokens:
                out.append(joined[: enc.offsets[tokens - 1][1]])
                break
            i += 1 + n  # the next piece from outside the other prompts' starting points
    return out


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 99])
    return float(p50), float(p99)


def time_calls(fn, inputs) -> list[float]:
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def measure(router, prompts: list[str], warmup: list[str]) -> dict:
    for p in warmup:
        router.strong_win_rate([p])
    decision = time_calls(lambda p: router.strong_win_rate([p]), prompts)
    vectors, rep = [], []
    for p in prompts:
        t0 = time.perf_counter()
        vectors.append(router.embedder([p]))
        rep.append(time.perf_counter() - t0)
    # the router alone: its embedder replaced by one that hands back the vector just made
    real = router.embedder
    pairs = list(zip(prompts, vectors, strict=False))
    holder = {}

    class Given:
        model = real.model

        def __call__(self, texts):
            return holder["v"]

    router._embedder = Given()
    if getattr(router, "knn", None) is not None and router.knn is not router:
        router.knn._embedder = router._embedder

    def router_only(pv):
        holder["v"] = pv[1]
        router.strong_win_rate([pv[0]])

    def old_path(pv):
        holder["v"] = pv[1]
        q = router._frame(router.reference_quality([pv[0]]))
        router.strong_win_rate(None, quality=q)

    alone = time_calls(router_only, pairs)
    old = time_calls(old_path, pairs) if hasattr(router, "reference_quality") else None
    router.embedder = real
    return {
        "decision": percentiles(decision),
        "representation": percentiles(rep),
        "router": percentiles(alone),
        "old_router": percentiles(old) if old else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--representations", nargs="+", default=["minilm", "minilm-static"])
    ap.add_argument("--routers", nargs="+", default=["ensemble", "knn"])
    ap.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    ap.add_argument("--calls", type=int, default=300, help="timed decisions per cell (each a new prompt)")
    ap.add_argument("--artifact-root", help="train artifacts here (shared with router_quality.py); default: a temp dir")
    ap.add_argument("--pin", action="store_true", help="bind the process to one CPU as well")
    args = ap.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    if args.pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    load = os.getloadavg()
    tmp = None
    if args.artifact_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="tela-decision-speed-")
        args.artifact_root = tmp.name
    store = ArtifactStore(args.artifact_root)
    labels_ref, labels = labels_artifact(store, None)
    texts = labels.drop_duplicates("prompt_id")["prompt"].tolist()
    warmup = make_prompts(texts, 64, 20, seed=99)
    prompts = {n: make_prompts(texts, n, args.calls, seed=n) for n in args.lengths}

    print(
        f"# Routing decision time, one thread (load average at start {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}, {os.cpu_count()} CPUs{', pinned to one' if args.pin else ''})"
    )
    print(f"{args.calls} decisions per cell, each on a new prompt; milliseconds")
    print()
    print(
        "| router | representation | tokens | decision p50 | decision p99 | representation p50 | router p50 "
        "| router p50, old path | decision p50 vs MiniLM |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base: dict[tuple[str, int], float] = {}
    with threadpool_limits(1):
        for kind in args.routers:
            for rep in args.representations:
                ref = train_router(
                    labels_ref,
                    router_type=kind,
                    router_params={"representation": rep},
                    strong_model=bm.STRONG_MODEL,
                    weak_model=bm.WEAK_MODEL,
                    artifact_root=store.root,
                )
                router = load_router(ref["key"], store)
                if isinstance(router, EmbeddingRouter):
                    router.embedder = Embedder(None, model=rep, cache_bytes=0)  # no vector cache: new prompts
                for n in args.lengths:
                    r = measure(router, prompts[n], warmup)
                    d50, d99 = r["decision"]
                    base.setdefault((kind, n), d50)
                    old = f"{r['old_router'][0]:.3f}" if r["old_router"] else "-"
                    print(
                        f"| {kind} | {rep} | {n} | {d50:.3f} | {d99:.3f} | {r['representation'][0]:.3f} | "
                        f"{r['router'][0]:.3f} | {old} | {d50 / base[(kind, n)]:.3f} |",
                        flush=True,
                    )
    end = os.getloadavg()
    print()
    print(f"load average at end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
