"""One benchmark: score a router on its evaluation prompts and write that benchmark's files.

`evaluate_benchmark` scores a RouteLLM benchmark under a protocol (`protocol_table`) after
the leakage check (`train_prompt_ids`, `check_no_leakage`): a prompt the router trained on
is never scored. `write_benchmark_outputs` writes scores_/curves_/plot_<bench> into a stage
context and returns the metrics.json entry and data.parquet row (`benchmark_report`); the
evaluate stage (`evaluation.evaluate`) and the cross-fit (`evaluation.crossfit`) share them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.core.schemas import OWN_BENCHMARK, finite_or_none
from router_tasks.core.stage import ArtifactRef
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.metrics import LeakageError
from router_tasks.evaluation.own_labels import pair_prices
from router_tasks.evaluation.plots import finish_png, new_axes

TRAIN_PROMPTS_FILE = "train_prompts.parquet"

#: how each benchmark's quality reads (the metrics keep the benchmark's own units)
QUALITY_UNITS = {
    "mmlu": "accuracy",
    "gsm8k": "accuracy",
    "mt-bench": "GPT-4 score (1-10)",
    OWN_BENCHMARK: "judged quality (0-1)",
}
#: the lowest quality of a benchmark's scale (0 unless named): "95% of the strong model's
#: quality" is measured above it (`metrics.calls_saved`)
QUALITY_FLOOR = {"mt-bench": 1.0}


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


def strong_win_scores(router, bench: str, prompts: Sequence[str]) -> np.ndarray:
    scores = np.asarray(router.strong_win_rate(list(prompts)), dtype=float).reshape(-1)
    if len(scores) != len(prompts):
        raise ValueError(f"benchmark {bench!r}: router returned {len(scores)} scores for {len(prompts)} prompts")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(
            f"benchmark {bench!r}: router score of prompt #{bad[0]} ({prompts[bad[0]][:60]!r}) is {scores[bad[0]]}"
        )
    return scores


def benchmark_plot(
    bench: str, summary: dict, strong_model: str, weak_model: str, commercial: pd.DataFrame | None
) -> bytes:
    pct = QUALITY_UNITS.get(bench) == "accuracy"
    scale = 100.0 if pct else 1.0
    fig, ax = new_axes()
    curves = summary["curves"]

    def line(key, **kw):
        c = curves[key]
        ax.plot(100 * c["strong_share"], scale * c["quality"], **kw)

    r, e = summary["routellm"], summary["exact"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    line(
        ("exact", "router"), color="tab:blue", linewidth=1, alpha=0.5, label=f"router, per-prompt (APGR {f(e['apgr'])})"
    )
    line(("routellm", "router"), color="tab:blue", marker="o", label=f"router, 10 bins (APGR {f(r['apgr'])})")
    line(("routellm", "random"), color="tab:gray", marker=".", label=f"random, 10 seeds (APGR {f(r['random_apgr'])})")
    line(("exact", "oracle"), color="tab:green", linestyle=":", label=f"oracle (APGR {f(e['oracle_apgr'])})")
    ax.axhline(scale * summary["strong_mean"], color="tab:red", linestyle="--", label=f"strong: {strong_model}")
    ax.axhline(scale * summary["weak_mean"], color="black", linestyle="--", label=f"weak: {weak_model}")
    if commercial is not None:
        for i, row in commercial.iterrows():
            color = ["tab:purple", "tab:orange", "tab:brown"][i % 3]
            if row["strong_share"] == row["strong_share"]:  # known share: a point
                ax.scatter(
                    [100 * row["strong_share"]],
                    [scale * row["score"]],
                    marker="*",
                    s=160,
                    color=color,
                    zorder=5,
                    label=f"{row['router']} ({row['score']:.2f})",
                )
            else:  # the router did not say which model answered: its score only
                ax.axhline(
                    scale * row["score"],
                    color=color,
                    linestyle="-.",
                    linewidth=1,
                    label=f"{row['router']} ({row['score']:.2f}, strong share unknown)",
                )
    ax.set_ylabel("accuracy (%)" if pct else QUALITY_UNITS.get(bench, "quality"))
    ax.set_title(f"{bench}: {summary['n']} prompts")
    return finish_png(fig, ax)


#: protocols `evaluate_router` runs in one pass (cross-fit retrains: `router_tasks.evaluation.crossfit`)
PROTOCOLS = ("holdout", "transfer")


def protocol_table(b: bm.Benchmark, protocol: str, strong_model: str, weak_model: str) -> pd.DataFrame:
    """The prompts a protocol scores: "holdout" the fixed ~20% eval split of a benchmark
    that also supplies training labels; "transfer" every decontaminated prompt (the leakage
    check then proves the router never saw any of them)."""
    if protocol == "transfer":
        return b.table(strong_model, weak_model, split="all")
    if protocol == "holdout":
        if b.protocol != "holdout":
            raise ValueError(
                f"benchmark {b.name!r} has no training split, so no holdout protocol; use 'transfer' (or 'crossfit')"
            )
        return b.table(strong_model, weak_model, split="eval")
    raise ValueError(
        f"unknown protocol {protocol!r}; expected one of {PROTOCOLS} "
        "(or 'crossfit' via router_tasks.evaluation.crossfit)"
    )


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
    protocol: str | None = None,
    quality_target: float = mx.SAVINGS_LEVEL,
    prices: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """(scores table, summary from `metrics.summarize`, commercial points or None).

    `protocol`: None follows the benchmark's own (`Benchmark.protocol`); see
    `protocol_table` for "transfer" / "holdout". `prices` ({model: $ per 1M tokens}) give
    the dollars saved where both models have one.
    """
    b = bm.get_benchmark(bench)
    protocol = protocol or b.protocol
    table = protocol_table(b, protocol, strong_model, weak_model)
    if max_prompts is not None and len(table) > max_prompts:
        # A deterministic subset (smallest prompt ids) for quick runs; the report says n.
        table = table.sort_values("prompt_id").head(max_prompts).reset_index(drop=True)
    if table.empty:
        raise ValueError(f"benchmark {bench!r} has no evaluation prompts for {strong_model} vs {weak_model}")
    check_no_leakage(bench, table, trained)
    scores = strong_win_scores(router, bench, table["prompt"].tolist())
    summary = mx.summarize(
        scores,
        table["strong_quality"],
        table["weak_quality"],
        num_results=num_results,
        random_seeds=random_seeds,
        quality_target=quality_target,
        prices=pair_prices(prices or {}, strong_model, weak_model),
        quality_floor=QUALITY_FLOOR.get(bench, 0.0),
    )
    summary["protocol"] = protocol
    return scored_table(table, scores), summary, commercial_points(bench, strong_model, weak_model)


def scored_table(table: pd.DataFrame, scores, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The per-prompt scores file of a benchmark: ids, prompt, score, both models' quality."""
    cols = {
        "prompt_id": table["prompt_id"].astype(str),
        "prompt": table["prompt"].astype(str),
        "strong_win_rate": np.asarray(scores),
        "strong_quality": table["strong_quality"],
        "weak_quality": table["weak_quality"],
        "category": table["category"],
    }
    return pd.DataFrame({**cols, **{c: table[c] for c in extra}})


def commercial_points(bench: str, strong_model: str, weak_model: str) -> pd.DataFrame | None:
    """The commercial routers' points on the bench's plot (MT-Bench only), or None."""
    if bench != "mt-bench":
        return None
    points = bm.commercial_router_points(strong_model=strong_model, weak_model=weak_model)
    return None if points.empty else points


def _curves_table(summary: dict) -> pd.DataFrame:
    parts = [c.assign(mode=mode, method=method) for (mode, method), c in summary["curves"].items()]
    out = pd.concat(parts, ignore_index=True)
    return out[["mode", "method", "threshold", "strong_share", "quality"]]


def benchmark_report(bench: str, s: dict, strong: str, weak: str, commercial: pd.DataFrame | None) -> tuple[dict, dict]:
    """(metrics.json entry, data.parquet row) of one benchmark's summary."""
    entry = {
        "protocol": s["protocol"],
        "n_prompts": s["n"],
        "quality_unit": QUALITY_UNITS.get(bench),
        "strong_quality": s["strong_mean"],
        "weak_quality": s["weak_mean"],
        "quality_target": s.get("quality_target"),
        "quality_floor": s.get("quality_floor"),
        "prices": s.get("prices"),
        "routellm": s["routellm"],
        "exact": s["exact"],
    }
    if commercial is not None:
        entry["commercial_routers"] = [
            {k: finite_or_none(v) for k, v in rec.items()} for rec in commercial.to_dict(orient="records")
        ]
    row = {
        "benchmark": bench,
        "protocol": s["protocol"],
        "n_prompts": s["n"],
        "strong_model": strong,
        "weak_model": weak,
        "strong_quality": s["strong_mean"],
        "weak_quality": s["weak_mean"],
        "quality_target": s.get("quality_target"),
    }
    for mode, suffix in (("routellm", ""), ("exact", "_exact")):
        for k, v in s[mode].items():
            row[f"{k}{suffix}"] = np.nan if v is None else v
    return entry, row


def write_benchmark_outputs(
    ctx, bench: str, scored: pd.DataFrame, s: dict, strong: str, weak: str, commercial: pd.DataFrame | None
) -> tuple[dict, dict]:
    """Write scores_/curves_/plot_<bench> into the stage context; returns `benchmark_report`."""
    ctx.write_table(scored, f"scores_{bench}.parquet")
    ctx.write_table(_curves_table(s), f"curves_{bench}.parquet")
    ctx.write_file(f"plot_{bench}.png", benchmark_plot(bench, s, strong, weak, commercial))
    return benchmark_report(bench, s, strong, weak, commercial)


def skip_reason(bench: str, strong: str, weak: str) -> str | None:
    """Why RouteLLM benchmark `bench` cannot score a strong/weak router, or None if it can."""
    have = bm.get_benchmark(bench).models()
    missing = [m for m in (strong, weak) if m not in have]
    if missing:
        return (
            f"no results for {', '.join(missing)} in the bundled {bench} data "
            f"(it has {len(have)} models, e.g. {have[0]})"
        )
    return None
