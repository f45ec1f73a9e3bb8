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

Code, top to bottom: `evaluate_router` (the stage entry: config and inputs) runs
`evaluate_stage` (load the router and what it trained on), which calls `score_router` (the
evaluation from in-memory inputs, no store needed for the holdout protocol) and
`write_evaluation` (the files below). One benchmark's scoring, leakage check, plot and
files are `router_tasks.evaluation.benchmark`.

Outputs (stages/evaluate/<key>/):
    data.parquet             one row per benchmark, headline metrics (publish reads `apgr`)
    metrics.json             every metric, both modes, baselines, models, protocol
    scores_<bench>.parquet   prompt_id, prompt, strong_win_rate (+ both models' quality)
    curves_<bench>.parquet   mode, method (router/random/oracle), threshold, strong_share, quality
    plot_<bench>.png         quality vs % strong calls (+ Martian/Unify on MT-Bench)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import pandas as pd

from router_tasks.core.schemas import OWN_BENCHMARK, finite_or_none
from router_tasks.core.stage import ArtifactRef, resolve_ref, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.benchmark import (
    PROTOCOLS,
    evaluate_benchmark,
    skip_reason,
    train_prompt_ids,
    write_benchmark_outputs,
)
from router_tasks.evaluation.own_labels import (
    OwnLabelsSkipped,
    cost_plot,
    evaluate_own_labels,
    evaluate_own_left_out,
    prices_of,
    read_own_labels,
)
from router_tasks.evaluation.report import OWN_LEFT_OUT, render_report
from router_tasks.routers import load_router
from router_tasks.training.train import training_labels_ref

log = logging.getLogger(__name__)

STAGE = "evaluate"
STAGE_VERSION = "4"  # 2: report.md; 3: own labels, skipped benchmarks, spec; 4: own labels, each kind left out


def evaluation_spec(config: dict, scored: list[str], own_plan: dict | None, own_used: ArtifactRef | None) -> dict:
    """What a score depends on besides the router: two routers compare only on equal specs.

    `own_labels` is the labels artifact the own-labels benchmark was taken from (whether
    given or the router's training labels): re-scoring another router on this spec passes
    it explicitly, so both are scored on the same prompts."""
    spec = {
        k: config.get(k)
        for k in ("benchmarks", "protocol", "max_prompts", "num_results", "random_seeds", "holdout", "data", "own")
    }
    spec["own_labels"] = (
        None
        if own_used is None
        else {"stage": own_used.stage, "key": own_used.key, "fingerprint": own_used.fingerprint}
    )
    spec["scored"] = list(scored)
    spec["own_plan"] = (
        None
        if own_plan is None
        else {k: own_plan.get(k) for k in ("protocol", "folds", "split", "n_heldout", "heldout_sha256")}
    )
    return spec


def _own_outputs(ctx, s: dict, strong: str, weak: str, scored: pd.DataFrame) -> tuple[dict, dict]:
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
            raise ValueError(
                f"labels {store.uri(ref.key)} changed: fingerprint {ref.fingerprint}, "
                f"the spec names {value['fingerprint']}"
            )
        return ref
    return ArtifactRef.of(resolve_ref(value, store))


@dataclass(frozen=True)
class OwnLabels:
    """The run's own labels to score a router on: the labels `table`, and the artifact
    (`ref` in `store`) it was read from. The table alone scores the holdout protocol (enough
    labels); the cross-fit protocol (few labels) and each kind left out retrain the router
    per fold from the stored artifact."""

    table: pd.DataFrame
    ref: ArtifactRef | None = None
    store: ArtifactStore | None = None


@dataclass
class BenchmarkResult:
    """One scored benchmark: per-prompt scores (`scored_table`), the `metrics.summarize`
    summary, the pair compared, the commercial routers' points and the seconds it took."""

    name: str
    scored: pd.DataFrame
    summary: dict
    strong: str
    weak: str
    commercial: pd.DataFrame | None = None
    seconds: float = 0.0


@dataclass
class Evaluation:
    """What `score_router` found: the scored benchmarks (own labels first), the skipped ones
    with the reason, and the own labels each kind left out (`left_out`: (scores table,
    summary), a skip reason, or None when not tried)."""

    results: list[BenchmarkResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    own_plan: dict | None = None
    own_used: ArtifactRef | None = None
    left_out: tuple[pd.DataFrame, dict] | str | None = None
    left_out_seconds: float = 0.0


def score_own_labels(router, own: OwnLabels, trained: set[str], ev: Evaluation, **settings) -> None:
    """Score `router` on the run's own labels into `ev`: the own-labels benchmark, then (when
    scored and stored) each kind of own traffic left out in turn. `settings`: `num_results`,
    `random_seeds`, `max_prompts`, `quality_target`, `prices`."""
    started = time.time()
    try:
        scored, s = evaluate_own_labels(router, own.table, trained, labels_ref=own.ref, store=own.store, **settings)
    except (OwnLabelsSkipped, ValueError) as e:
        ev.skipped[OWN_BENCHMARK] = str(e)
        return
    ev.own_plan, ev.own_used = s["plan"], own.ref
    ev.results.append(
        BenchmarkResult(
            OWN_BENCHMARK, scored, s, router.strong_model, router.weak_model, seconds=round(time.time() - started, 3)
        )
    )
    if own.ref is None or own.store is None:
        return  # leaving a kind out retrains the router from the stored labels
    # beside the own-labels figure, never in the headline rows: the publish metric stays what it was
    started = time.time()
    try:
        ev.left_out = evaluate_own_left_out(
            router,
            own.table,
            own.ref,
            own.store,
            num_results=settings["num_results"],
            random_seeds=settings["random_seeds"],
        )
    except (OwnLabelsSkipped, ValueError) as e:
        ev.left_out = str(e)
    else:
        ev.left_out_seconds = round(time.time() - started, 3)


def score_router(
    router,
    trained: set[str],
    *,
    benchmarks: Sequence[str] = (),
    own: OwnLabels | str | None = None,
    strong_model: str | None = None,
    weak_model: str | None = None,
    num_results: int = 10,
    random_seeds: int = 10,
    max_prompts: int | None = None,
    protocol: str | None = None,
    quality_target: float = mx.SAVINGS_LEVEL,
    prices: dict[str, float] | None = None,
) -> Evaluation:
    """Score a loaded router that trained on the prompt ids `trained`: the run's own labels
    first (`own`: the labels, or the reason there are none), then each RouteLLM benchmark of
    `benchmarks` that has results for the strong/weak pair (default the router's own; the
    others are skipped with the reason). Reads and writes no artifact of its own; raises
    LeakageError when a scored prompt is one the router trained on."""
    prices = dict(prices or {})
    ev = Evaluation()
    if isinstance(own, str):
        ev.skipped[OWN_BENCHMARK] = own
    elif own is not None:
        score_own_labels(
            router,
            own,
            trained,
            ev,
            num_results=num_results,
            random_seeds=random_seeds,
            max_prompts=max_prompts,
            quality_target=quality_target,
            prices=prices,
        )
    strong = strong_model or router.strong_model
    weak = weak_model or router.weak_model
    for bench in benchmarks:
        reason = skip_reason(bench, strong, weak)
        if reason:
            ev.skipped[bench] = reason
            log.info("%s skipped: %s", bench, reason)
            continue
        started = time.time()
        scored, s, commercial = evaluate_benchmark(
            router,
            bench,
            strong,
            weak,
            trained,
            num_results=num_results,
            random_seeds=random_seeds,
            max_prompts=max_prompts,
            protocol=protocol,
            quality_target=quality_target,
            prices=prices,
        )
        ev.results.append(BenchmarkResult(bench, scored, s, strong, weak, commercial, round(time.time() - started, 3)))
    return ev


def own_labels_input(store: ArtifactStore, router_ref: ArtifactRef, own_ref: ArtifactRef | None) -> OwnLabels | str:
    """The own labels to score on (`own_ref`, default the router's training labels), or the
    reason there are none."""
    try:
        ref = own_ref or ArtifactRef.of(training_labels_ref(store, router_ref))
        return OwnLabels(read_own_labels(ref, store), ref, store)
    except (OwnLabelsSkipped, ValueError) as e:
        return str(e)


def left_out_entry(left_out: tuple[pd.DataFrame, dict] | str | None) -> dict | None:
    """metrics.json's `own_left_out` entry."""
    if left_out is None:
        return None
    if isinstance(left_out, str):
        return {"skipped": left_out}
    s = left_out[1]
    return {
        k: s[k]
        for k in ("protocol", "group_by", "per_group", "left_in", "strong_mean", "weak_mean", "routellm", "exact")
    } | {"n_prompts": s["n"]}


def metrics_report(
    ev: Evaluation,
    per_bench: dict,
    rows: list[dict],
    config: dict,
    *,
    router_ref: ArtifactRef,
    router,
    trained: set[str],
) -> dict:
    """metrics.json of an evaluation: the router, the pair, every benchmark's entry, the spec."""
    strong = config["strong_model"] or router.strong_model
    weak = config["weak_model"] or router.weak_model
    training = router.meta.get("training_data") or {}
    return {
        "router": {
            "key": router_ref.key,
            "fingerprint": router_ref.fingerprint,
            "kind": getattr(router, "kind", None),
            "strong_model": router.strong_model,
            "weak_model": router.weak_model,
            "n_train_prompts": len(trained),
        },
        "strong_model": strong,
        "weak_model": weak,
        "strong_quality": training.get("strong_quality", "labeled"),
        "holdout": {"fraction": bm.HOLDOUT_FRACTION, "salt": bm.HOLDOUT_SALT},
        "num_results": config["num_results"],
        "random_seeds": config["random_seeds"],
        "quality_target": config["quality_target"],
        "modes": {
            "routellm": "RouteLLM repo method: thresholds at the 11 edges of 10 quantile bins, "
            "trapezoid AUC over strong share, CPT by np.interp",
            "exact": "every distinct score as a threshold (ties enter together), CPT at the first crossing",
        },
        "benchmarks": per_bench,
        "own_left_out": left_out_entry(ev.left_out),
        "skipped": ev.skipped,
        "spec": evaluation_spec(config, [row["benchmark"] for row in rows], ev.own_plan, ev.own_used),
    }


def write_evaluation(ctx, ev: Evaluation, config: dict, router_ref: ArtifactRef, router, trained: set[str]) -> None:
    """Write an evaluation into the stage context: each benchmark's files, metrics.json,
    report.md and the headline table (data.parquet)."""
    rows, per_bench, timings = [], {}, {}
    for res in ev.results:
        if res.name == OWN_BENCHMARK:
            entry, row = _own_outputs(ctx, res.summary, res.strong, res.weak, res.scored)
        else:
            entry, row = write_benchmark_outputs(
                ctx, res.name, res.scored, res.summary, res.strong, res.weak, res.commercial
            )
        per_bench[res.name] = entry
        rows.append(row)
        timings[res.name] = res.seconds
    if isinstance(ev.left_out, tuple):
        ctx.write_table(ev.left_out[0], f"scores_{OWN_LEFT_OUT}.parquet")
        timings[OWN_LEFT_OUT] = ev.left_out_seconds
    for row in rows:
        log.info(
            "%s (%s, n=%d): APGR %s (exact %s), CPT50 %s, calls saved at 95%% %s (exact %s), random %s, oracle %s",
            row["benchmark"],
            row["protocol"],
            row["n_prompts"],
            row["apgr"],
            row["apgr_exact"],
            row["cpt50"],
            row["calls_saved_at_95"],
            row["calls_saved_at_95_exact"],
            row["random_apgr"],
            row["oracle_apgr"],
        )
    report = metrics_report(ev, per_bench, rows, config, router_ref=router_ref, router=router, trained=trained)
    ctx.write_file("metrics.json", json.dumps(report, indent=2, sort_keys=True, allow_nan=False, default=str).encode())
    ctx.write_file(
        "report.md",
        render_report(
            report, rows, data_fingerprint=config["data"], labels=router.meta.get("training_data") or {}
        ).encode(),
    )
    ctx.write_table(pd.DataFrame(rows))
    ctx.stats.update(
        prompts_scored={b: per_bench[b]["n_prompts"] for b in per_bench},
        skipped=ev.skipped,
        seconds_per_benchmark=timings,
        train_prompts=len(trained),
    )


def evaluate_stage(ctx, config: dict) -> None:
    """The evaluate stage's compute: load the router and what it trained on, score it
    (`score_router`), write the outputs (`write_evaluation`)."""
    ref = ctx.inputs["router"]
    r = load_router(ref.to_dict(), ctx.store)
    strong = config["strong_model"] or r.strong_model
    weak = config["weak_model"] or r.weak_model
    if (strong, weak) != (r.strong_model, r.weak_model):
        log.warning(
            "evaluating on %s vs %s, but the router was trained for %s vs %s",
            strong,
            weak,
            r.strong_model,
            r.weak_model,
        )
    trained = train_prompt_ids(ctx.store, ref)
    own = own_labels_input(ctx.store, ref, ctx.inputs.get("own_labels")) if config["own"] else None
    ev = score_router(
        r,
        trained,
        benchmarks=config["benchmarks"],
        own=own,
        strong_model=strong,
        weak_model=weak,
        num_results=config["num_results"],
        random_seeds=config["random_seeds"],
        max_prompts=config["max_prompts"],
        protocol=config["protocol"],
        quality_target=config["quality_target"],
        prices=config["prices"],
    )
    if not ev.results:
        raise ValueError(
            "nothing to evaluate this router on: " + "; ".join(f"{b}: {why}" for b, why in ev.skipped.items())
        )
    write_evaluation(ctx, ev, config, ref, r, trained)


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
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(
            f"unknown protocol {protocol!r}; expected one of {PROTOCOLS} (cross-fit: router_tasks.evaluation.crossfit)"
        )
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

    return run_stage(
        STAGE, STAGE_VERSION, partial(evaluate_stage, config=config), inputs=inputs, config=config, store=store
    )
