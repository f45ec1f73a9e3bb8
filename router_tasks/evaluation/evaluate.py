"""Evaluate: score a trained router on the bundled RouteLLM benchmarks.

For each benchmark the router scores every evaluation prompt once (`strong_win_rate`);
sweeping a threshold over those scores gives quality against the share of strong-model
calls, summarised as APGR, AUC and CPT(20/50/80%) in two ways (RouteLLM's 10-bin method
and the exact per-prompt curve; see `router_tasks.evaluation.metrics`), next to a random router
(mean of 10 seeds) and the oracle.

Protocols (`router_tasks.data.routellm`): MMLU and GSM8K are scored on their fixed ~20%
holdout only ("holdout"); MT-Bench, never a training source here, is scored whole
("transfer"), routed on the first turn as RouteLLM does. Either way, a prompt the router
trained on must not be scored: the train artifact lists its prompt ids in
`train_prompts.parquet`, and evaluation refuses to run if any benchmark prompt is in it.
`protocol="transfer"` scores every decontaminated prompt of any benchmark (the same check
then proves none was trained on); "crossfit" retrains per fold (`router_tasks.evaluation.crossfit`).
`evaluate_to_dir` is `tela evaluate --output DIR`: one benchmark, any protocol, plain files.

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

from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.core.stage import ArtifactRef, run_stage
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "evaluate"
STAGE_VERSION = "2"  # 2: report.md
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


def new_axes():
    """(figure, axes) on an Agg canvas: no pyplot global state, safe in a worker process
    with no display, whatever backend another import selected."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def finish_png(fig, ax) -> bytes:
    ax.set_xlabel("strong model calls (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plot(bench: str, summary: dict, strong_model: str, weak_model: str, commercial: pd.DataFrame | None) -> bytes:
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
    ax.set_ylabel("accuracy (%)" if pct else QUALITY_UNITS.get(bench, "quality"))
    ax.set_title(f"{bench}: {summary['n']} prompts")
    return finish_png(fig, ax)


#: protocols `evaluate_router` runs in one pass (cross-fit retrains: `router_tasks.evaluation.crossfit`)
PROTOCOLS = ("holdout", "transfer")


def protocol_table(b: "bm.Benchmark", protocol: str, strong_model: str, weak_model: str) -> pd.DataFrame:
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
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS} (or 'crossfit' via router_tasks.evaluation.crossfit)")


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
) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """(scores table, summary from `metrics.summarize`, commercial points or None).

    `protocol`: None follows the benchmark's own (`Benchmark.protocol`); see
    `protocol_table` for "transfer" / "holdout".
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
        scores, table["strong_quality"], table["weak_quality"], num_results=num_results, random_seeds=random_seeds
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


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def benchmark_report(bench: str, s: dict, strong: str, weak: str, commercial: pd.DataFrame | None) -> tuple[dict, dict]:
    """(metrics.json entry, data.parquet row) of one benchmark's summary."""
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
    return entry, row


def write_benchmark_outputs(
    ctx, bench: str, scored: pd.DataFrame, s: dict, strong: str, weak: str, commercial: pd.DataFrame | None
) -> tuple[dict, dict]:
    """Write scores_/curves_/plot_<bench> into the stage context; returns `benchmark_report`."""
    ctx.write_table(scored, f"scores_{bench}.parquet")
    ctx.write_table(_curves_table(s), f"curves_{bench}.parquet")
    ctx.write_file(f"plot_{bench}.png", _plot(bench, s, strong, weak, commercial))
    return benchmark_report(bench, s, strong, weak, commercial)


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
    protocol: str | None = None,
) -> dict:
    """Evaluate the train artifact `router` (a ref dict) on `benchmarks`; returns the ref.

    `strong_model` / `weak_model`: the benchmark pair to compare; default the router's own
    pair (they must have results in the benchmark files). `protocol`: None = each
    benchmark's own ("holdout" for MMLU/GSM8K, "transfer" for MT-Bench), or "transfer" /
    "holdout" for all of them (see `protocol_table`).
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS} (cross-fit: router_tasks.evaluation.crossfit)")
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
    if protocol is not None:  # only when set: artifacts of the default protocol keep their keys
        config["protocol"] = protocol

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
                max_prompts=max_prompts, protocol=protocol,
            )
            timings[bench] = round(time.time() - started, 3)
            per_bench[bench], row = write_benchmark_outputs(ctx, bench, scored, s, strong, weak, commercial)
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
        ctx.write_file("report.md", render_report(report, rows, data_fingerprint=config["data"],
                                                  labels=r.meta.get("training_data") or {}).encode())
        ctx.write_table(pd.DataFrame(rows))
        ctx.stats.update(
            prompts_scored={b: per_bench[b]["n_prompts"] for b in names},
            seconds_per_benchmark=timings,
            train_prompts=len(trained),
        )

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"router": router_ref}, config=config, store=store)


def render_report(report: dict, rows: list[dict], *, data_fingerprint: str, labels: dict) -> str:
    """The human-readable evaluation report: tables, plots (beside it), protocol, fingerprints."""

    def num(v, pct=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    router = report["router"]
    out = [
        f"# Evaluation of router `{router['key']}`",
        "",
        f"- router: {router['kind']} for {report['strong_model']} (strong) vs {report['weak_model']} (weak), "
        f"fingerprint `{router['fingerprint']}`",
        f"- trained on labels `{labels.get('labels_key', '?')}` (fingerprint `{labels.get('labels_fingerprint', '?')}`), "
        f"{router['n_train_prompts']} prompts; none of them is scored below (checked)",
        f"- benchmark data fingerprint `{data_fingerprint}`; holdout: {report['holdout']}",
        "- protocols: *holdout* = the fixed evaluation split the labels stage never trains on; "
        "*transfer* = a benchmark the router never trains on (decontaminated); "
        "*crossfit* = k folds by prompt, the router's recipe retrained without each scored fold; "
        "*leave-group-out* = folds by group (MMLU subject, task), no group both trained on and scored "
        "(`tela evaluate --protocol crossfit|leave-group-out --output DIR`)",
        "",
        "| benchmark | protocol | prompts | APGR | AUC | CPT(20%) | CPT(50%) | CPT(80%) | random APGR | oracle APGR | APGR exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row['benchmark']} | {row['protocol']} | {row['n_prompts']} | {num(row.get('apgr'))} | "
            f"{num(row.get('auc'))} | {num(row.get('cpt20'), True)} | {num(row.get('cpt50'), True)} | "
            f"{num(row.get('cpt80'), True)} | {num(row.get('random_apgr'))} | {num(row.get('oracle_apgr'))} | "
            f"{num(row.get('apgr_exact'))} |"
        )
    out += ["", "Metrics in RouteLLM's repo mode unless marked *exact*; CPT is the share of strong-model calls "
            "needed to reach that share of the strong-weak quality gap.", ""]
    for row in rows:
        out += [f"## {row['benchmark']}", "", f"![{row['benchmark']}](plot_{row['benchmark']}.png)", ""]
    return "\n".join(out) + "\n"


def evaluate_to_dir(
    router: str | dict,
    benchmark: str,
    protocol: str | None,
    output_dir: str,
    artifact_root: str | None = None,
    *,
    folds: int = 5,
    num_results: int = 10,
    random_seeds: int = 10,
    max_prompts: int | None = None,
) -> dict:
    """`tela evaluate --router R --benchmark B --protocol P --output DIR`, as a function.

    Runs (or reuses) the evaluate / crossfit artifact for one benchmark, then writes into
    `output_dir` (a folder or s3:// prefix): `metrics.json` (the artifact's report plus
    benchmark, protocol and artifact ref), `scores.parquet` (prompt, strong_win_rate, then
    prompt_id, both models' quality and, for cross-fit, fold) and `plot.png`.
    `router`: "champion", a train ref dict (or its JSON), key or URI. `protocol`:
    "transfer", "holdout", "crossfit", or None for the benchmark's own. Returns
    {"output_dir", "files", "artifact", "metrics"} (metrics: the data.parquet row).
    """
    from router_tasks.routers import resolve_router_key
    from router_tasks.core.stage import load_table, resolve_ref

    bm.iter_benchmarks([benchmark])
    if protocol not in (None, "crossfit", "leave-group-out", *PROTOCOLS):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'transfer', 'holdout', 'crossfit' or 'leave-group-out'")
    store, key = resolve_router_key(router, ArtifactStore(artifact_root))
    router_ref = resolve_ref(key, store)  # artifacts go beside the router they evaluate
    if protocol in ("crossfit", "leave-group-out"):
        from router_tasks.evaluation.crossfit import crossfit_evaluate

        ref = crossfit_evaluate(router_ref, benchmark, folds=folds, num_results=num_results,
                                random_seeds=random_seeds, max_prompts=max_prompts, artifact_root=store.root,
                                protocol=protocol)
    else:
        try:
            ref = evaluate_router(router_ref, benchmarks=[benchmark], num_results=num_results,
                                  random_seeds=random_seeds, max_prompts=max_prompts,
                                  artifact_root=store.root, protocol=protocol)
        except LeakageError as e:
            raise LeakageError(f"{e} (protocol 'crossfit' retrains the router without each scored prompt)") from None
    akey = ArtifactRef.of(ref).key
    report = store.read_json(f"{akey}/metrics.json")
    row = load_table(ref, store).iloc[0]
    protocol_used = str(row["protocol"])
    report.update(benchmark=benchmark, protocol=protocol_used, artifact=ref)

    scores = store.read_parquet(f"{akey}/scores_{benchmark}.parquet")
    first = ["prompt", "strong_win_rate"]
    scores = scores[first + [c for c in scores.columns if c not in first]]
    out = ArtifactStore(output_dir)
    out.write_bytes("metrics.json", json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode())
    out.write_parquet("scores.parquet", scores)
    out.write_bytes("plot.png", store.read_bytes(f"{akey}/plot_{benchmark}.png"))
    files = {name: out.uri(name) for name in ("metrics.json", "scores.parquet", "plot.png")}
    log.info("%s on %s (%s): APGR %.3f -> %s", benchmark, router_ref["key"], protocol_used, row["apgr"], out.uri(""))
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else (v.item() if hasattr(v, "item") else v))
               for k, v in row.to_dict().items()}
    return {"output_dir": out.uri(""), "files": files, "artifact": ref, "metrics": metrics}
