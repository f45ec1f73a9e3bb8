"""Evaluate: score a trained router on the bundled RouteLLM benchmarks.

For each benchmark the router scores every evaluation prompt once (`strong_win_rate`);
sweeping a threshold over those scores gives quality against the share of strong-model
calls, summarised as APGR, AUC and CPT(20/50/80%) in two ways (RouteLLM's 10-bin method
and the exact per-prompt curve; see `router_tasks.metrics`), next to a random router
(mean of 10 seeds) and the oracle.

Protocols (`router_tasks.benchmarks`): MMLU and GSM8K are scored on their fixed ~20%
holdout only ("holdout"); MT-Bench, never a training source here, is scored whole
("transfer"), routed on the first turn as RouteLLM does. Either way, a prompt the router
trained on must not be scored: the train artifact lists its prompt ids in
`train_prompts.parquet`, and evaluation refuses to run if any benchmark prompt is in it.

Outputs (stages/evaluate/<key>/):
    data.parquet             one row per benchmark, headline metrics (publish reads `apgr`)
    metrics.json             every metric, both modes, baselines, models, protocol
    scores_<bench>.parquet   prompt_id, prompt, strong_win_rate (+ both models' quality)
    curves_<bench>.parquet   mode, method (router/random/oracle), threshold, strong_share, quality
    plot_<bench>.png         quality vs % strong calls (+ Martian/Unify on MT-Bench)
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks import benchmarks as bm
from router_tasks import metrics as mx
from router_tasks.stage import ArtifactRef, run_stage
from router_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "evaluate"
STAGE_VERSION = "1"
TRAIN_PROMPTS_FILE = "train_prompts.parquet"

#: how each benchmark's quality reads (the metrics keep the benchmark's own units)
QUALITY_UNITS = {"mmlu": "accuracy", "gsm8k": "accuracy", "mt-bench": "GPT-4 score (1-10)"}


class LeakageError(RuntimeError):
    """A benchmark prompt the router was trained on was about to be scored."""


def train_prompt_ids(store: ArtifactStore, router_ref: ArtifactRef) -> set[str]:
    """Prompt ids the router trained on, from its train artifact."""
    key = f"{router_ref.key}/{TRAIN_PROMPTS_FILE}"
    if not store.exists(key):
        raise LeakageError(
            f"router artifact {store.uri(router_ref.key)} has no {TRAIN_PROMPTS_FILE}: "
            "cannot prove its training prompts are disjoint from the benchmarks, refusing to evaluate"
        )
    df = store.read_parquet(key)
    if "prompt_id" not in df.columns:
        raise LeakageError(f"{store.uri(key)} lacks a prompt_id column (has {list(df.columns)})")
    return set(df["prompt_id"].astype(str))


def check_no_leakage(bench: str, table: pd.DataFrame, trained: set[str]) -> None:
    leaked = table.loc[table["prompt_id"].isin(trained), "prompt_id"]
    if len(leaked):
        raise LeakageError(
            f"benchmark {bench!r}: {len(leaked)} of {len(table)} evaluation prompts are in the "
            f"router's training prompts (e.g. prompt_id {leaked.iloc[0]}); scoring them would "
            "overstate the router. Retrain without them (RouteLLM labels keep the eval holdout out) "
            "or evaluate on other benchmarks."
        )


def _scores(router, bench: str, prompts: Sequence[str]) -> np.ndarray:
    scores = np.asarray(router.strong_win_rate(list(prompts)), dtype=float).reshape(-1)
    if len(scores) != len(prompts):
        raise ValueError(f"benchmark {bench!r}: router returned {len(scores)} scores for {len(prompts)} prompts")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(
            f"benchmark {bench!r}: router score of prompt #{bad[0]} ({prompts[bad[0]][:60]!r}) is {scores[bad[0]]}"
        )
    return scores


def _plot(bench: str, summary: dict, strong_model: str, weak_model: str, commercial: pd.DataFrame | None) -> bytes:
    # Figure + Agg canvas directly: no pyplot global state, safe in a worker process
    # with no display, whatever backend another import selected.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pct = QUALITY_UNITS.get(bench) == "accuracy"
    scale = 100.0 if pct else 1.0
    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = summary["curves"]

    def line(key, **kw):
        c = curves[key]
        ax.plot(100 * c["strong_share"], scale * c["quality"], **kw)

    r, e = summary["routellm"], summary["exact"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    line(("exact", "router"), color="tab:blue", linewidth=1, alpha=0.5, label=f"router, per-prompt (APGR {f(e['apgr'])})")
    line(("routellm", "router"), color="tab:blue", marker="o", label=f"router, 10 bins (APGR {f(r['apgr'])})")
    line(("routellm", "random"), color="tab:gray", marker=".", label=f"random, 10 seeds (APGR {f(r['random_apgr'])})")
    line(("exact", "oracle"), color="tab:green", linestyle=":", label=f"oracle (APGR {f(e['oracle_apgr'])})")
    ax.axhline(scale * summary["strong_mean"], color="tab:red", linestyle="--", label=f"strong: {strong_model}")
    ax.axhline(scale * summary["weak_mean"], color="black", linestyle="--", label=f"weak: {weak_model}")
    if commercial is not None:
        for i, row in commercial.iterrows():
            color = ["tab:purple", "tab:orange", "tab:brown"][i % 3]
            if row["strong_share"] == row["strong_share"]:  # known share: a point
                ax.scatter([100 * row["strong_share"]], [scale * row["score"]], marker="*", s=160, color=color, zorder=5,
                           label=f"{row['router']} ({row['score']:.2f})")
            else:  # the router did not say which model answered: its score only
                ax.axhline(scale * row["score"], color=color, linestyle="-.", linewidth=1,
                           label=f"{row['router']} ({row['score']:.2f}, strong share unknown)")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("accuracy (%)" if pct else QUALITY_UNITS.get(bench, "quality"))
    ax.set_xlim(0, 100)
    ax.set_title(f"{bench}: {summary['n']} prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def evaluate_benchmark(
    router,
    bench: str,
    strong_model: str,
    weak_model: str,
    trained: set[str],
    *,
    num_results: int = 10,
    random_seeds: int = 10,
    max_prompts: int | None = None,
) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """(scores table, summary from `metrics.summarize`, commercial points or None)."""
    b = bm.get_benchmark(bench)
    table = b.eval_table(strong_model, weak_model)
    if max_prompts is not None and len(table) > max_prompts:
        # A deterministic subset (smallest prompt ids) for quick runs; the report says n.
        table = table.sort_values("prompt_id").head(max_prompts).reset_index(drop=True)
    if table.empty:
        raise ValueError(f"benchmark {bench!r} has no evaluation prompts for {strong_model} vs {weak_model}")
    check_no_leakage(bench, table, trained)
    scores = _scores(router, bench, table["prompt"].tolist())
    summary = mx.summarize(
        scores, table["strong_quality"], table["weak_quality"], num_results=num_results, random_seeds=random_seeds
    )
    summary["protocol"] = b.protocol
    scored = pd.DataFrame(
        {
            "prompt_id": table["prompt_id"].astype(str),
            "prompt": table["prompt"].astype(str),
            "strong_win_rate": scores,
            "strong_quality": table["strong_quality"],
            "weak_quality": table["weak_quality"],
            "category": table["category"],
        }
    )
    commercial = None
    if bench == "mt-bench":
        commercial = bm.commercial_router_points(strong_model=strong_model, weak_model=weak_model)
        if commercial.empty:
            commercial = None
    return scored, summary, commercial


def _curves_table(summary: dict) -> pd.DataFrame:
    parts = [c.assign(mode=mode, method=method) for (mode, method), c in summary["curves"].items()]
    out = pd.concat(parts, ignore_index=True)
    return out[["mode", "method", "threshold", "strong_share", "quality"]]


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def evaluate_router(
    router: dict,
    *,
    benchmarks: Sequence[str] = bm.BENCHMARKS,
    strong_model: str | None = None,
    weak_model: str | None = None,
    num_results: int = 10,
    random_seeds: int = 10,
    max_prompts: int | None = None,
    artifact_root: str | None = None,
) -> dict:
    """Evaluate the train artifact `router` (a ref dict) on `benchmarks`; returns the ref.

    `strong_model` / `weak_model`: the benchmark pair to compare; default the router's own
    pair (they must have results in the benchmark files).
    """
    store = ArtifactStore(artifact_root)
    names = bm.iter_benchmarks(benchmarks)
    if not names:
        raise ValueError("no benchmarks to evaluate")
    router_ref = ArtifactRef.of(router)
    config = {
        "benchmarks": names,
        "strong_model": strong_model,
        "weak_model": weak_model,
        "num_results": num_results,
        "random_seeds": random_seeds,
        "max_prompts": max_prompts,
        # what decides the evaluated prompts and their quality: new data, new artifact
        "holdout": bm.HOLDOUT_VERSION,
        "data": bm.data_fingerprint(),
    }

    def compute(ctx) -> None:
        from router_tasks.routers import load_router

        ref = ctx.inputs["router"]
        r = load_router(ref.to_dict(), ctx.store)
        strong = strong_model or r.strong_model
        weak = weak_model or r.weak_model
        if (strong, weak) != (r.strong_model, r.weak_model):
            log.warning(
                "evaluating on %s vs %s, but the router was trained for %s vs %s",
                strong, weak, r.strong_model, r.weak_model,
            )
        trained = train_prompt_ids(ctx.store, ref)
        rows, per_bench, timings = [], {}, {}
        for bench in names:
            started = time.time()
            scored, s, commercial = evaluate_benchmark(
                r, bench, strong, weak, trained, num_results=num_results, random_seeds=random_seeds,
                max_prompts=max_prompts,
            )
            timings[bench] = round(time.time() - started, 3)
            ctx.write_table(scored, f"scores_{bench}.parquet")
            ctx.write_table(_curves_table(s), f"curves_{bench}.parquet")
            ctx.write_file(f"plot_{bench}.png", _plot(bench, s, strong, weak, commercial))
            entry = {
                "protocol": s["protocol"],
                "n_prompts": s["n"],
                "quality_unit": QUALITY_UNITS.get(bench),
                "strong_quality": s["strong_mean"],
                "weak_quality": s["weak_mean"],
                "routellm": s["routellm"],
                "exact": s["exact"],
            }
            if commercial is not None:
                entry["commercial_routers"] = [
                    {k: _finite(v) for k, v in rec.items()} for rec in commercial.to_dict(orient="records")
                ]
            per_bench[bench] = entry
            row = {
                "benchmark": bench,
                "protocol": s["protocol"],
                "n_prompts": s["n"],
                "strong_model": strong,
                "weak_model": weak,
                "strong_quality": s["strong_mean"],
                "weak_quality": s["weak_mean"],
            }
            for mode, suffix in (("routellm", ""), ("exact", "_exact")):
                for k, v in s[mode].items():
                    row[f"{k}{suffix}"] = np.nan if v is None else v
            rows.append(row)
            log.info(
                "%s (%s, n=%d): APGR %.3f (exact %.3f), CPT50 %.3f, random %.3f, oracle %.3f",
                bench, s["protocol"], s["n"], row["apgr"], row["apgr_exact"], row["cpt50"],
                row["random_apgr"], row["oracle_apgr"],
            )

        report = {
            "router": {
                "key": ref.key,
                "fingerprint": ref.fingerprint,
                "kind": getattr(r, "kind", None),
                "strong_model": r.strong_model,
                "weak_model": r.weak_model,
                "n_train_prompts": len(trained),
            },
            "strong_model": strong,
            "weak_model": weak,
            "holdout": {"fraction": bm.HOLDOUT_FRACTION, "salt": bm.HOLDOUT_SALT},
            "num_results": num_results,
            "random_seeds": random_seeds,
            "modes": {
                "routellm": "RouteLLM repo method: thresholds at the 11 edges of 10 quantile bins, "
                "trapezoid AUC over strong share, CPT by np.interp",
                "exact": "every distinct score as a threshold (ties enter together), CPT at the first crossing",
            },
            "benchmarks": per_bench,
        }
        ctx.write_file("metrics.json", json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode())
        ctx.write_table(pd.DataFrame(rows))
        ctx.stats.update(
            prompts_scored={b: per_bench[b]["n_prompts"] for b in names},
            seconds_per_benchmark=timings,
            train_prompts=len(trained),
        )

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"router": router_ref}, config=config, store=store)
