"""Evaluate: score a trained router on the run's own labels and the bundled RouteLLM benchmarks.

First benchmark, "own-labels" (`router_tasks.evaluation.own_labels`): the run's own
prompts, endpoints and judge, scored on prompts the router never trained on (a fixed hash
holdout, or k-fold cross-fit when labels are few), with per-model calibration and a
quality-vs-cost curve over every priced model. A RouteLLM benchmark is scored only when it
has results for both of the router's models; otherwise it is skipped with a one-line
reason in metrics.json and the report.

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
`router_tasks.evaluation.export.evaluate_to_dir` is `tela evaluate --output DIR`.

metrics.json's `spec` is what a score depends on besides the router (benchmarks, protocol,
prompt caps, holdout and data fingerprints, the own-labels set): publish compares a
challenger with the champion only on the same spec.

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
import time
from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.metrics import LeakageError
from router_tasks.evaluation.own_labels import pair_prices
from router_tasks.evaluation.report import OWN_LEFT_OUT, render_report
from router_tasks.core.schemas import OWN_BENCHMARK, finite_or_none
from router_tasks.core.stage import ArtifactRef, resolve_ref, run_stage
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "evaluate"
STAGE_VERSION = "4"  # 2: report.md; 3: own labels, skipped benchmarks, spec; 4: own labels, each kind left out
TRAIN_PROMPTS_FILE = "train_prompts.parquet"

#: how each benchmark's quality reads (the metrics keep the benchmark's own units)
QUALITY_UNITS = {"mmlu": "accuracy", "gsm8k": "accuracy", "mt-bench": "GPT-4 score (1-10)",
                 OWN_BENCHMARK: "judged quality (0-1)"}
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
        scores, table["strong_quality"], table["weak_quality"], num_results=num_results, random_seeds=random_seeds,
        quality_target=quality_target, prices=pair_prices(prices or {}, strong_model, weak_model),
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
    ctx.write_file(f"plot_{bench}.png", _plot(bench, s, strong, weak, commercial))
    return benchmark_report(bench, s, strong, weak, commercial)


def skip_reason(bench: str, strong: str, weak: str) -> str | None:
    """Why RouteLLM benchmark `bench` cannot score a strong/weak router, or None if it can."""
    have = bm.get_benchmark(bench).models()
    missing = [m for m in (strong, weak) if m not in have]
    if missing:
        return f"no results for {', '.join(missing)} in the bundled {bench} data (it has {len(have)} models, e.g. {have[0]})"
    return None


def evaluation_spec(config: dict, scored: list[str], own_plan: dict | None, own_used: ArtifactRef | None) -> dict:
    """What a score depends on besides the router: two routers compare only on equal specs.

    `own_labels` is the labels artifact the own-labels benchmark was taken from (whether
    given or the router's training labels): re-scoring another router on this spec passes
    it explicitly, so both are scored on the same prompts."""
    spec = {k: config.get(k) for k in ("benchmarks", "protocol", "max_prompts", "num_results", "random_seeds",
                                       "holdout", "data", "own")}
    spec["own_labels"] = None if own_used is None else {"stage": own_used.stage, "key": own_used.key,
                                                         "fingerprint": own_used.fingerprint}
    spec["scored"] = list(scored)
    spec["own_plan"] = None if own_plan is None else {
        k: own_plan.get(k) for k in ("protocol", "folds", "split", "n_heldout", "heldout_sha256")}
    return spec


def _own_outputs(ctx, s: dict, strong: str, weak: str, scored: pd.DataFrame) -> tuple[dict, dict]:
    from router_tasks.evaluation.own_labels import cost_plot

    entry, row = write_benchmark_outputs(ctx, OWN_BENCHMARK, scored, s, strong, weak, None)
    calibration, curve = s["calibration"], s["cost_curve"]
    ctx.write_table(calibration, f"calibration_{OWN_BENCHMARK}.parquet")
    ctx.write_table(curve, f"cost_curve_{OWN_BENCHMARK}.parquet")
    if len(curve):
        ctx.write_file(f"plot_cost_{OWN_BENCHMARK}.png", cost_plot(curve, int(len(scored))))
    entry.update(
        plan=s["plan"],
        calibration=calibration.to_dict(orient="records"),
        cost_curve=[{k: finite_or_none(v) for k, v in r.items()} for r in curve.to_dict(orient="records")],
        prices=s["prices"],
    )
    return entry, row


def _labels_ref(value, store: ArtifactStore) -> ArtifactRef:
    """A labels artifact from a ref dict, key or URI; a {key, fingerprint} record (an
    evaluation spec's) must still have that fingerprint."""
    if isinstance(value, dict) and "uri" not in value and "key" in value:
        ref = ArtifactRef.of(resolve_ref(value["key"], store))
        if value.get("fingerprint") not in (None, ref.fingerprint):
            raise ValueError(f"labels {store.uri(ref.key)} changed: fingerprint {ref.fingerprint}, "
                             f"the spec names {value['fingerprint']}")
        return ref
    return ArtifactRef.of(resolve_ref(value, store))


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
    own: bool = True,
    own_labels: dict | None = None,
    models: list[dict] | None = None,
    quality_target: float = mx.SAVINGS_LEVEL,
    prices: dict[str, float] | None = None,
) -> dict:
    """Evaluate the train artifact `router` (a ref dict); returns the evaluate ref.

    Scores the run's own labels first (`own`; `own_labels`: the labels artifact to take
    them from, default the router's training labels), then each of `benchmarks` that has
    results for the router's two models (the others are skipped, with the reason).
    `strong_model` / `weak_model`: the RouteLLM pair to compare; default the router's own.
    `protocol`: None = each benchmark's own ("holdout" for MMLU/GSM8K, "transfer" for
    MT-Bench), or "transfer" / "holdout" for all of them (see `protocol_table`).
    `models`: the endpoint list (as the DAG's `models` param); their prices draw the
    own-labels quality-vs-cost curve. `quality_target`: besides 95%, the share of the strong
    model's quality at which the strong-model calls saved are reported; `prices` ({model: $
    per 1M tokens}, over the endpoints' own) give the dollars saved. Raises ValueError when
    nothing could be scored.
    """
    from router_tasks.evaluation.own_labels import prices_of

    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS} (cross-fit: router_tasks.evaluation.crossfit)")
    store = ArtifactStore(artifact_root)
    names = bm.iter_benchmarks(benchmarks)
    if not names and not own:
        raise ValueError("no benchmarks to evaluate")
    router_ref = ArtifactRef.of(router)
    own_ref = _labels_ref(own_labels, store) if own_labels is not None else None
    if not 0 < float(quality_target) <= 1:
        raise ValueError(f"quality_target must be in (0, 1], got {quality_target!r}")
    prices = {**prices_of(models), **{str(k): float(v) for k, v in (prices or {}).items()}}
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
        "protocol": protocol,
        "own": own,
        "own_labels": None if own_ref is None else {"key": own_ref.key, "fingerprint": own_ref.fingerprint},
        "prices": prices,
        "quality_target": float(quality_target),
    }
    inputs = {"router": router_ref} | ({"own_labels": own_ref} if own_ref is not None else {})

    def compute(ctx) -> None:
        from router_tasks.evaluation.own_labels import OwnLabelsSkipped, evaluate_own_labels, evaluate_own_left_out
        from router_tasks.routers import load_router
        from router_tasks.training.train import training_labels_ref

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
        rows, per_bench, timings, skipped = [], {}, {}, {}
        own_plan = own_used = None
        if own:
            started = time.time()
            try:
                labels_ref = own_ref or ArtifactRef.of(training_labels_ref(ctx.store, ref))
                scored, s = evaluate_own_labels(r, labels_ref, ctx.store, trained, prices=prices,
                                                num_results=num_results, random_seeds=random_seeds,
                                                max_prompts=max_prompts, quality_target=quality_target)
            except (OwnLabelsSkipped, ValueError) as e:
                skipped[OWN_BENCHMARK] = str(e)
            else:
                own_plan, own_used = s["plan"], labels_ref
                per_bench[OWN_BENCHMARK], row = _own_outputs(ctx, s, r.strong_model, r.weak_model, scored)
                rows.append(row)
                timings[OWN_BENCHMARK] = round(time.time() - started, 3)
        left_out = None
        if own and own_used is not None:
            # beside the own-labels figure, never in `rows`: the publish metric stays what it was
            started = time.time()
            try:
                table, s = evaluate_own_left_out(r, own_used, ctx.store, num_results=num_results,
                                                 random_seeds=random_seeds)
            except (OwnLabelsSkipped, ValueError) as e:
                left_out = {"skipped": str(e)}
            else:
                ctx.write_table(table, f"scores_{OWN_LEFT_OUT}.parquet")
                left_out = {k: s[k] for k in ("protocol", "group_by", "per_group", "left_in", "strong_mean",
                                              "weak_mean", "routellm", "exact")} | {"n_prompts": s["n"]}
                timings[OWN_LEFT_OUT] = round(time.time() - started, 3)
        for bench in names:
            reason = skip_reason(bench, strong, weak)
            if reason:
                skipped[bench] = reason
                log.info("%s skipped: %s", bench, reason)
                continue
            started = time.time()
            scored, s, commercial = evaluate_benchmark(
                r, bench, strong, weak, trained, num_results=num_results, random_seeds=random_seeds,
                max_prompts=max_prompts, protocol=protocol, quality_target=quality_target, prices=prices,
            )
            timings[bench] = round(time.time() - started, 3)
            per_bench[bench], row = write_benchmark_outputs(ctx, bench, scored, s, strong, weak, commercial)
            rows.append(row)
        for row in rows:
            log.info(
                "%s (%s, n=%d): APGR %s (exact %s), CPT50 %s, calls saved at 95%% %s (exact %s), random %s, oracle %s",
                row["benchmark"], row["protocol"], row["n_prompts"], row["apgr"], row["apgr_exact"], row["cpt50"],
                row["calls_saved_at_95"], row["calls_saved_at_95_exact"], row["random_apgr"], row["oracle_apgr"],
            )
        if not rows:
            raise ValueError("nothing to evaluate this router on: " + "; ".join(f"{b}: {why}" for b, why in skipped.items()))

        spec = evaluation_spec(config, [row["benchmark"] for row in rows], own_plan, own_used)
        training = r.meta.get("training_data") or {}
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
            "strong_quality": training.get("strong_quality", "labeled"),
            "holdout": {"fraction": bm.HOLDOUT_FRACTION, "salt": bm.HOLDOUT_SALT},
            "num_results": num_results,
            "random_seeds": random_seeds,
            "quality_target": float(quality_target),
            "modes": {
                "routellm": "RouteLLM repo method: thresholds at the 11 edges of 10 quantile bins, "
                "trapezoid AUC over strong share, CPT by np.interp",
                "exact": "every distinct score as a threshold (ties enter together), CPT at the first crossing",
            },
            "benchmarks": per_bench,
            "own_left_out": left_out,
            "skipped": skipped,
            "spec": spec,
        }
        ctx.write_file("metrics.json", json.dumps(report, indent=2, sort_keys=True, allow_nan=False, default=str).encode())
        ctx.write_file("report.md", render_report(report, rows, data_fingerprint=config["data"],
                                                  labels=training).encode())
        ctx.write_table(pd.DataFrame(rows))
        ctx.stats.update(
            prompts_scored={b: per_bench[b]["n_prompts"] for b in per_bench},
            skipped=skipped,
            seconds_per_benchmark=timings,
            train_prompts=len(trained),
        )

    return run_stage(STAGE, STAGE_VERSION, compute, inputs=inputs, config=config, store=store)
