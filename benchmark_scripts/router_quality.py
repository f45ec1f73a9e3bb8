"""Router quality (cross-fit and leave-group-out APGR / CPT / strong-model calls saved at 95% of
its quality) and speed on the bundled RouteLLM data.

    .venv/bin/python benchmark_scripts/router_quality.py                      # the full run
    .venv/bin/python benchmark_scripts/router_quality.py --max-prompts 1000   # quick check
    .venv/bin/python benchmark_scripts/router_quality.py --routers knn ensemble --artifact-root /tmp/rq

Quality is measured by the product's own cross-fit (`router_tasks.evaluation.crossfit`,
the code behind `tela evaluate --protocol crossfit|leave-group-out`), not by a copy of it:

1. one labels artifact: GPT-4-1106 and Mixtral-8x7B correctness on every decontaminated
   MMLU and GSM8K prompt (`crossfit.benchmark_labels`);
2. per router kind, the train stage fits its default recipe on those labels;
3. `crossfit_evaluate` retrains that recipe per fold and scores what each fold held out:
   - *cross-fit* (MMLU, GSM8K): 5 folds by prompt;
   - *leave-group-out*: MMLU 5 folds by subject (no subject both trained on and scored),
     GSM8K held out whole (trained on MMLU only), MT-Bench held out whole (transfer).
   Settings a router chooses from data (the ensemble's blend) are chosen inside each
   fold's training labels (`router_tasks.routers.selection`): nested, never on the scored
   prompts.

Every stage is an artifact under --artifact-root (a temporary folder by default), so a
re-run with the same root reuses all of it; the same figures come from the CLI with
`tela evaluate --router <train artifact> --benchmark mmlu --protocol leave-group-out
--output DIR` on a router trained on the same labels (the script prints its keys).

Speed: each router is fit once on all labels in-process (training time, embeddings
served from the packaged seed cache), then scores prompts with their embeddings
precomputed: one batch of 2,000 prompts (median of 5 runs), and 200 calls of one prompt
each. Speed figures move with the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd

from router_tasks.core.stage import ArtifactRef, load_table, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.crossfit import benchmark_labels, crossfit_evaluate
from router_tasks.routers import EmbeddingRouter, make_router
from router_tasks.routers.embeddings import Embedder
from router_tasks.routers.ensemble import COMPONENTS
from router_tasks.training.train import train_router

TRAIN_BENCHES = ("mmlu", "gsm8k")
#: (column title, benchmark, protocol)
RUNS = (
    ("MMLU cross-fit", "mmlu", "crossfit"),
    ("GSM8K cross-fit", "gsm8k", "crossfit"),
    ("MMLU leave-subject-out", "mmlu", "leave-group-out"),
    ("GSM8K held out", "gsm8k", "leave-group-out"),
    ("MT-Bench transfer", "mt-bench", "leave-group-out"),
)
ROUTER_TYPES = ("random", "knn", "mf", "ensemble")
#: RouteLLM paper's best APGR (GPT-4 vs Mixtral), for reference only: not measured here
PUBLISHED_APGR = {"mmlu": 0.603, "gsm8k": 0.622}
#: strong-model cost saved at 95% of its quality, published, for reference only (not measured here):
#: the seed document's table and RouteLLM's paper (best router, "over 85%" on MT-Bench)
PUBLISHED_SAVINGS = {
    "seed": {"mt-bench": 0.70, "mmlu": 0.30, "gsm8k": 0.40},
    "RouteLLM paper": {"mt-bench": 0.85, "mmlu": 0.45, "gsm8k": 0.35},
}
BATCH_N, SINGLE_N = 2000, 200


def labels_artifact(store: ArtifactStore, max_prompts: int | None) -> tuple[dict, pd.DataFrame]:
    """The labels artifact every router trains on, and its table."""
    models = [bm.STRONG_MODEL, bm.WEAK_MODEL]
    parts = []
    for name in TRAIN_BENCHES:
        table = bm.get_benchmark(name).table(*models, split="all")
        if max_prompts is not None and len(table) > max_prompts:
            table = table.sort_values("prompt_id").head(max_prompts)
        parts.append(benchmark_labels(name, table["prompt_id"], models))
    labels = pd.concat(parts, ignore_index=True)
    ref = run_stage(
        "benchmark_labels",
        "1",
        lambda ctx: ctx.write_table(labels),
        config={"benchmarks": list(TRAIN_BENCHES), "max_prompts": max_prompts, "data": bm.data_fingerprint()},
        store=store,
    )
    return ref, labels


def quality(
    kind: str,
    labels_ref: dict,
    store: ArtifactStore,
    folds: int,
    seed: int,
    max_prompts: int | None,
    runs=RUNS,
    params: dict | None = None,
    prices: dict | None = None,
) -> dict:
    router = train_router(labels_ref, router_type=kind, router_params=params, artifact_root=store.root)
    out = {"train_key": router["key"]}
    for title, bench, protocol in runs:
        t0 = time.perf_counter()
        cf = crossfit_evaluate(
            router,
            bench,
            folds=folds,
            seed=seed,
            protocol=protocol,
            max_prompts=max_prompts,
            artifact_root=store.root,
            prices=prices,
        )
        row = load_table(cf, store).iloc[0].to_dict()
        row["seconds"] = time.perf_counter() - t0
        scored = store.read_parquet(f"{ArtifactRef.of(cf).key}/scores_{bench}.parquet")
        row["category_oracle_apgr"] = category_oracle_apgr(scored)
        row["category_oracle_router_within_apgr"] = category_oracle_apgr(scored, within="router")
        row["key"] = cf["key"]
        if kind == "ensemble":  # what each fold's nested selection chose
            fkeys = store.read_parquet(f"{ArtifactRef.of(cf).key}/folds.parquet")["train_key"]
            row["blends"] = [json.loads(store.read_bytes(f"{k}/ensemble_selection.json")) for k in fkeys]
        out[title] = row
        logging.info("%s %s: APGR %.3f (%.0f s)", kind, title, row["apgr"], row["seconds"])
    return out


def category_oracle_apgr(scores: pd.DataFrame, within: str = "fixed") -> float | None:
    """Exact APGR of scoring every prompt by its category's true mean strong-weak gap (the
    MMLU subject): the best a router can do that tells categories apart perfectly and
    nothing within them. A ceiling, not a router: it reads the scored prompts' labels.
    `within="router"` orders the prompts inside a category by the router's own score (what
    perfect category knowledge plus the router's within-category ranking would give).
    None without categories."""
    cat = scores["category"]
    if cat.isna().all() or cat.nunique() < 2:
        return None
    gap = scores["strong_quality"] - scores["weak_quality"]
    s = gap.groupby(cat).transform("mean").to_numpy(float)
    if within == "router":  # category means differ by far more than 1e-9
        s = s + 1e-9 * scores["strong_win_rate"].rank(method="average").to_numpy(float) / len(s)
    # otherwise a category is one tie group on the exact curve: its prompts enter together,
    # which is the expected curve over random orders inside it (a fixed order, e.g. the
    # rows', would move the figure: by 0.03 on MT-Bench's 72 prompts)
    curve = mx.exact_curve(s, scores["strong_quality"], scores["weak_quality"])
    return mx.apgr(curve, float(scores["strong_quality"].mean()), float(scores["weak_quality"].mean()))


def new_router(kind: str, models: list[str], params: dict | None = None):
    router = make_router(kind, models, bm.STRONG_MODEL, bm.WEAK_MODEL, params)
    if isinstance(router, EmbeddingRouter):
        router.embedder = Embedder()  # in-memory cache, seeded with the packaged benchmark vectors
    return router


class PrecomputedEmbedder:
    """Serves vectors computed beforehand: scoring time without any embedding work."""

    def __init__(self, prompts: list[str], vectors: np.ndarray):
        self.table = dict(zip(prompts, vectors, strict=False))
        self.dim = vectors.shape[1]
        self.stats = {}

    def __call__(self, texts):
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def speed(kind: str, labels: pd.DataFrame, prompts: list[str], params: dict | None = None, repeats: int = 5) -> dict:
    models = sorted(labels["model"].unique())
    router = new_router(kind, models, params)
    t0 = time.perf_counter()
    router.fit(labels)
    fit_s = time.perf_counter() - t0
    if isinstance(router, EmbeddingRouter):  # the router's own representation, computed beforehand
        router.embedder = PrecomputedEmbedder(prompts, Embedder(model=router.representation)(prompts))
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
    ap.add_argument(
        "--max-prompts", type=int, default=None, help="per benchmark: the first N prompts by id (quick check)"
    )
    ap.add_argument("--seed", type=int, default=0, help="fold assignment salt")
    ap.add_argument("--artifact-root", help="keep (and reuse) the artifacts here; default: a temporary folder")
    ap.add_argument(
        "--runs",
        nargs="+",
        type=int,
        help="only these columns (0-based, in table order); separate "
        "processes on one --artifact-root can split a long run and a last plain run prints it all",
    )
    ap.add_argument(
        "--params",
        type=json.loads,
        default=None,
        help="router params as JSON, for every router kind run (default: each kind's defaults)",
    )
    ap.add_argument(
        "--prices",
        type=json.loads,
        default=None,
        help='JSON {"model": $ per 1M tokens, input + output} for the two models: prints the dollars '
        "saved at 95%% quality too",
    )
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    load = os.getloadavg()
    cpus = os.cpu_count()
    started = time.perf_counter()
    tmp = None
    if args.artifact_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="tela-router-quality-")
        args.artifact_root = tmp.name
    store = ArtifactStore(args.artifact_root)
    labels_ref, labels = labels_artifact(store, args.max_prompts)
    print(
        f"# Router quality and speed ({platform.node()}, {cpus} CPUs, load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f})"
    )
    print(
        f"labels: {len(labels)} rows, {labels['prompt_id'].nunique()} prompts "
        + ", ".join(f"{b} {n}" for b, n in labels.drop_duplicates("prompt_id")["benchmark"].value_counts().items())
        + f"; {args.folds} folds (seed {args.seed}); artifacts in {store.root}"
    )

    runs = [RUNS[i] for i in args.runs] if args.runs else list(RUNS)
    results = {}
    for kind in args.routers:
        t0 = time.perf_counter()
        results[kind] = quality(
            kind, labels_ref, store, args.folds, args.seed, args.max_prompts, runs, args.params, args.prices
        )
        print(f"  {kind}: {time.perf_counter() - t0:.0f} s (train artifact {results[kind]['train_key']})", flush=True)

    titles = [t for t, _, _ in runs]
    print()
    print("## Routing quality, APGR (RouteLLM mode; exact curve in brackets; GPT-4-1106 vs Mixtral-8x7B)")
    print()
    print("| router | " + " | ".join(titles) + " |")
    print("|---|" + "---|" * len(titles))
    for kind, r in results.items():
        print(f"| {kind} | " + " | ".join(f"{r[t]['apgr']:.3f} ({r[t]['apgr_exact']:.3f})" for t in titles) + " |")
    print()
    print("| router | " + " | ".join(f"{t} CPT50" for t in titles) + " |")
    print("|---|" + "---|" * len(titles))
    for kind, r in results.items():
        print(f"| {kind} | " + " | ".join(f"{r[t]['cpt50']:.1%}" for t in titles) + " |")
    print()
    print("## Strong-model calls saved at 95% of its quality (RouteLLM mode; exact curve in brackets)")
    print()
    print("| router | " + " | ".join(titles) + " |")
    print("|---|" + "---|" * len(titles))
    for kind, r in results.items():
        print(
            f"| {kind} | "
            + " | ".join(f"{r[t]['calls_saved_at_95']:.1%} ({r[t]['calls_saved_at_95_exact']:.1%})" for t in titles)
            + " |"
        )
        if args.prices:
            print(
                f"| {kind}, dollars saved at prices {args.prices} | "
                + " | ".join(
                    f"{r[t]['dollars_saved_at_95']:.1%} ({r[t]['dollars_saved_at_95_exact']:.1%})" for t in titles
                )
                + " |"
            )
    bench_of = {t: b for t, b, _ in runs}
    for source, figures in PUBLISHED_SAVINGS.items():
        print(
            f"| {source} (published, not measured here) | "
            + " | ".join(f"{figures[bench_of[t]]:.0%}" for t in titles)
            + " |"
        )
    any_r = next(iter(results.values()), None)
    if any_r:
        print()
        for t in titles:
            s = any_r[t]
            ceiling = s.get("category_oracle_apgr")
            print(
                f"- {t}: n={s['n_prompts']}, random APGR {s['random_apgr']:.3f} (10 seeds), "
                f"oracle {s['oracle_apgr']:.3f}, "
                f"calls saved at 95%: random {s['random_calls_saved_at_95_exact']:.1%}, "
                f"oracle {s['oracle_calls_saved_at_95_exact']:.1%} (exact)"
                + (
                    f", category oracle {ceiling:.3f} (every prompt scored by its category's true mean gap: "
                    "a router that knows each category perfectly and nothing within it)"
                    if ceiling is not None
                    else ""
                )
            )
        print(
            f"- RouteLLM best (published, per-prompt splits, not measured here): MMLU {PUBLISHED_APGR['mmlu']:.3f}, "
            f"GSM8K {PUBLISHED_APGR['gsm8k']:.3f}"
        )
    print()
    for kind, r in results.items():
        cells = [
            f"{t} {r[t]['category_oracle_router_within_apgr']:.3f}"
            for t in titles
            if r[t].get("category_oracle_router_within_apgr") is not None
        ]
        if cells:
            print(f"- category oracle with {kind}'s order inside each category: " + ", ".join(cells))
    if "ensemble" in results:
        print()
        print(f"Ensemble blend chosen inside each fold ({' / '.join(COMPONENTS)}):")
        for t in titles:

            def fmt(blend: dict) -> str:
                return "/".join(f"{blend.get(c, 0.0):.2f}" for c in COMPONENTS)

            blends = [
                ", ".join(
                    f"{form.replace('_', '-')} {fmt(b['by_form'][form]['blend'])}"
                    for form in sorted(b.get("by_form", {}))
                )
                or f"shared {fmt(b['blend'])}" + ("" if b.get("selected") else " (fallback)")
                for b in results["ensemble"][t]["blends"]
            ]
            print(f"- {t}: " + "; ".join(blends))

    if not args.skip_speed:
        prompts = labels.drop_duplicates("prompt_id")["prompt"]
        prompts = prompts.sample(frac=1.0, random_state=0).tolist()  # mix MMLU and GSM8K
        rows = {kind: speed(kind, labels, prompts, args.params) for kind in args.routers}
        print()
        print(f"## Speed (embeddings precomputed; load average at start {load[0]:.2f}, {cpus} CPUs)")
        print()
        n_b, n_s = next(iter(rows.values()))["n_batch"], next(iter(rows.values()))["n_single"]
        print(
            f"| router | scoring, batch of {n_b:,} (prompts/s) | scoring, single ({n_s} calls, prompts/s) "
            f"| training on {len(labels):,} labels (s) |"
        )
        print("|---|---|---|---|")
        for kind, r in rows.items():
            print(f"| {kind} | {r['batch_pps']:,.0f} | {r['single_pps']:,.0f} | {r['fit_s']:.1f} |")

    end_load = os.getloadavg()
    print()
    print(
        f"total {time.perf_counter() - started:.0f} s; load average at end {end_load[0]:.2f} / "
        f"{end_load[1]:.2f} / {end_load[2]:.2f}"
    )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
