"""Router quality (5-fold cross-validated APGR / CPT) and speed on the bundled RouteLLM data.

    .venv/bin/python benchmark_scripts/router_quality.py                      # the full run (~1 min on 2 cores)
    .venv/bin/python benchmark_scripts/router_quality.py --max-prompts 1000   # quick check
    .venv/bin/python benchmark_scripts/router_quality.py --routers knn mf --folds 10
    .venv/bin/python benchmark_scripts/router_quality.py --routers ensemble

`ensemble` (kNN + logistic regression + gradient-boosted trees on MiniLM embeddings and
prompt-text features, `router_tasks.routers.ensemble`) is registered here if the registry
does not list it yet.

Quality (issue 5): every decontaminated MMLU and GSM8K prompt is dealt into k folds by
prompt id (`crossfit.assign_folds`, over the union of both benchmarks' prompts). For each
fold a fresh router (`make_router` with its default params) is fit in-process on the
labels of BOTH benchmarks' other folds (gpt-4-1106-preview and Mixtral-8x7B correctness,
all decontaminated prompts: the folds replace the fixed 20% evaluation holdout) and
scores the held-out fold with `strong_win_rate`. The per-prompt scores of the k folds
are stitched into one score per prompt and `metrics.summarize` gives APGR and CPT(50%)
per benchmark in RouteLLM's mode (10 quantile thresholds, trapezoid AUC, np.interp).

Speed: each router is fit once on all labels (training time, embeddings served from the
packaged seed cache, so no MiniLM forward pass is timed), then scores prompts with their
embeddings precomputed (a dict lookup stands in for the embedder): one batch of 2,000
prompts (median of 5 runs), and 200 calls of one prompt each. Speed figures move with
the machine's load: the load average is printed with them.

Nothing is written to disk; the script prints two Markdown tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd

from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.crossfit import assign_folds
from router_tasks.routers.embeddings import Embedder
from router_tasks.routers import EmbeddingRouter, make_router

BENCHES = ("mmlu", "gsm8k")
ROUTER_TYPES = ("random", "knn", "mf", "ensemble")
#: RouteLLM paper's best APGR (GPT-4 vs Mixtral), for reference only: not measured here
PUBLISHED_APGR = {"mmlu": 0.603, "gsm8k": 0.622}
BATCH_N, SINGLE_N = 2000, 200


def all_labels(max_prompts: int | None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(long labels of both benchmarks over all decontaminated prompts, per-benchmark tables)."""
    tables, parts = {}, []
    for name in BENCHES:
        b = bm.get_benchmark(name)
        table = b.table(bm.STRONG_MODEL, bm.WEAK_MODEL, split="all")
        if max_prompts is not None and len(table) > max_prompts:
            table = table.sort_values("prompt_id").head(max_prompts).reset_index(drop=True)
        tables[name] = table
        long = b.quality(decontaminate=True)
        long = long[long["prompt_id"].isin(set(table["prompt_id"]))]
        parts.append(
            pd.DataFrame(
                {
                    "prompt_id": long["prompt_id"].astype(str),
                    "prompt": long["prompt"].astype(str),
                    "model": long["model"].astype(str),
                    "quality": long["quality"].astype(float),
                    "benchmark": name,
                }
            )
        )
    labels = pd.concat(parts, ignore_index=True)
    return labels, tables


def new_router(kind: str, models: list[str]):
    router = make_router(kind, models, bm.STRONG_MODEL, bm.WEAK_MODEL)
    if isinstance(router, EmbeddingRouter):
        router.embedder = Embedder()  # in-memory cache, seeded with the packaged benchmark vectors
    return router


def crossval(kind: str, labels: pd.DataFrame, tables: dict, fold_of: pd.Series, folds: int) -> dict:
    """Stitched out-of-fold scores per benchmark -> summarize() per benchmark."""
    models = sorted(labels["model"].unique())
    label_fold = labels["prompt_id"].map(fold_of).to_numpy()
    scores = {name: np.full(len(t), np.nan) for name, t in tables.items()}
    table_fold = {name: t["prompt_id"].map(fold_of).to_numpy() for name, t in tables.items()}
    fit_s = score_s = 0.0
    for f in range(folds):
        train = labels[label_fold != f]
        router = new_router(kind, models)
        t0 = time.perf_counter()
        router.fit(train)
        fit_s += time.perf_counter() - t0
        trained = set(train["prompt_id"])
        for name, t in tables.items():
            idx = np.flatnonzero(table_fold[name] == f)
            held = t.iloc[idx]
            leak = trained & set(held["prompt_id"])
            if leak:  # cannot happen with a correct split; asserted, not assumed
                raise RuntimeError(f"{kind} fold {f}: trained on {len(leak)} prompts it scores ({name})")
            t0 = time.perf_counter()
            scores[name][idx] = router.strong_win_rate(held["prompt"].tolist())
            score_s += time.perf_counter() - t0
    out = {"fit_s": fit_s, "score_s": score_s}
    for name, t in tables.items():
        if np.isnan(scores[name]).any():
            raise RuntimeError(f"{kind}: {int(np.isnan(scores[name]).sum())} {name} prompts were never scored")
        s = mx.summarize(scores[name], t["strong_quality"], t["weak_quality"])
        out[name] = {"n": s["n"], **s["routellm"], "exact_apgr": s["exact"]["apgr"]}
    return out


class PrecomputedEmbedder:
    """Serves vectors computed beforehand: scoring time without any embedding work."""

    def __init__(self, prompts: list[str], vectors: np.ndarray):
        self.table = dict(zip(prompts, vectors))
        self.stats = {}

    def __call__(self, texts):
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


def speed(kind: str, labels: pd.DataFrame, prompts: list[str], pre: PrecomputedEmbedder, repeats: int = 5) -> dict:
    models = sorted(labels["model"].unique())
    router = new_router(kind, models)
    t0 = time.perf_counter()
    router.fit(labels)
    fit_s = time.perf_counter() - t0
    if isinstance(router, EmbeddingRouter):
        router.embedder = pre
    batch = prompts[:BATCH_N]
    router.strong_win_rate(batch[:10])  # warm-up (lazy imports, first torch call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        router.strong_win_rate(batch)
        times.append(time.perf_counter() - t0)
    single = prompts[:SINGLE_N]
    t0 = time.perf_counter()
    for p in single:
        router.strong_win_rate([p])
    single_s = time.perf_counter() - t0
    return {
        "fit_s": fit_s,
        "batch_pps": len(batch) / float(np.median(times)),
        "single_pps": len(single) / single_s,
        "n_batch": len(batch),
        "n_single": len(single),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--routers", nargs="+", default=list(ROUTER_TYPES), choices=list(ROUTER_TYPES))
    ap.add_argument("--max-prompts", type=int, default=None, help="per benchmark: the first N prompts by id (quick check)")
    ap.add_argument("--seed", type=int, default=0, help="fold assignment salt")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    load = os.getloadavg()
    cpus = os.cpu_count()
    started = time.perf_counter()
    labels, tables = all_labels(args.max_prompts)
    all_ids = pd.unique(pd.concat([t["prompt_id"] for t in tables.values()]))
    fold_of = assign_folds(all_ids, args.folds, args.seed)
    # warm the packaged-vector cache once so no router pays for reading it
    t0 = time.perf_counter()
    Embedder()(tables[BENCHES[0]]["prompt"].head(1).tolist())
    seed_s = time.perf_counter() - t0
    print(f"# Router quality and speed ({platform.node()}, {cpus} CPUs, load average at start "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f})")
    print(f"labels: {len(labels)} rows, {labels['prompt_id'].nunique()} prompts "
          + ", ".join(f"{n} {len(t)}" for n, t in tables.items())
          + f"; {args.folds} folds by prompt (seed {args.seed}); packaged vectors loaded in {seed_s:.1f} s")

    results = {}
    for kind in args.routers:
        t0 = time.perf_counter()
        results[kind] = crossval(kind, labels, tables, fold_of, args.folds)
        r = results[kind]
        print(f"  {kind}: cross-validated in {time.perf_counter() - t0:.1f} s "
              f"(fit {r['fit_s']:.1f} s, score {r['score_s']:.1f} s)", flush=True)

    print()
    print(f"## {args.folds}-fold cross-validated routing quality (RouteLLM mode; GPT-4-1106 vs Mixtral-8x7B)")
    print()
    print("| router | MMLU APGR | MMLU CPT50 | GSM8K APGR | GSM8K CPT50 |")
    print("|---|---|---|---|---|")
    for kind, r in results.items():
        cells = []
        for name in BENCHES:
            cells += [f"{r[name]['apgr']:.3f}", f"{r[name]['cpt50']:.1%}"]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(f"| RouteLLM best (published, not measured here) | {PUBLISHED_APGR['mmlu']:.3f} | - | "
          f"{PUBLISHED_APGR['gsm8k']:.3f} | - |")
    print()
    any_r = next(iter(results.values()), None)
    if any_r:
        for name in BENCHES:
            s = any_r[name]
            print(f"- {name}: n={s['n']}, random baseline APGR {s['random_apgr']:.3f} (10 seeds), "
                  f"oracle APGR {s['oracle_apgr']:.3f}")
        print("- exact-curve APGR: " + "; ".join(
            f"{k} " + " / ".join(f"{r[n]['exact_apgr']:.3f}" for n in BENCHES) for k, r in results.items()
        ) + " (MMLU / GSM8K)")

    if not args.skip_speed:
        prompts = pd.concat([t["prompt"] for t in tables.values()]).drop_duplicates()
        prompts = prompts.sample(frac=1.0, random_state=0).tolist()  # mix MMLU and GSM8K
        pre = PrecomputedEmbedder(prompts, Embedder()(prompts))
        rows = {kind: speed(kind, labels, prompts, pre) for kind in args.routers}
        print()
        print(f"## Speed (embeddings precomputed; load average at start {load[0]:.2f}, {cpus} CPUs)")
        print()
        n_b, n_s = next(iter(rows.values()))["n_batch"], next(iter(rows.values()))["n_single"]
        print(f"| router | scoring, batch of {n_b:,} (prompts/s) | scoring, single ({n_s} calls, prompts/s) "
              f"| training on {len(labels):,} labels (s) |")
        print("|---|---|---|---|")
        for kind, r in rows.items():
            print(f"| {kind} | {r['batch_pps']:,.0f} | {r['single_pps']:,.0f} | {r['fit_s']:.1f} |")

    end_load = os.getloadavg()
    print()
    print(f"total {time.perf_counter() - started:.0f} s; load average at end {end_load[0]:.2f} / "
          f"{end_load[1]:.2f} / {end_load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
