"""`tela evaluate | calibrate | publish | rollback | score | route`: evaluating, publishing
and using a trained router."""

from __future__ import annotations

import sys

from router_tasks.cli.base import Context, command, json_arg, json_or_file, library_defaults, pipeline_params


def _evaluate_args(s):
    s.add_argument("--router", help="train artifact or 'champion' (not for the zeroeval-* many-model benchmarks)")
    s.add_argument(
        "--benchmarks", nargs="+", default=library_defaults().BENCHMARKS, help="without --output: all of these"
    )
    s.add_argument(
        "--benchmark",
        choices=["mt-bench", "mmlu", "gsm8k", "zeroeval-gsm8k", "zeroeval-crux"],
        help="with --output: this one (zeroeval-*: many real models, cost-quality curves)",
    )
    s.add_argument("--pool", help="zeroeval-*: comma-separated models (default: a built-in pool of 10)")
    s.add_argument("--router-types", default="knn", help="zeroeval-*: router kinds to cross-fit, e.g. knn,mf,ensemble")
    s.add_argument(
        "--prices",
        help="zeroeval-*: prices.json-shaped file (default: the bundled one); otherwise JSON "
        '{"model": $ per 1M tokens} (or a .json file): the dollars saved at 95%% quality',
    )
    s.add_argument(
        "--quality-target",
        type=float,
        default=pipeline_params()["quality_target"],
        help="besides 95%%, report the strong-model calls saved at this share of its quality (0-1]",
    )
    s.add_argument("--no-cascades", action="store_true", help="zeroeval-*: one call per prompt only")
    s.add_argument(
        "--protocol",
        choices=["transfer", "holdout", "crossfit", "leave-group-out"],
        help="default: the benchmark's own; leave-group-out: folds by MMLU subject, other benchmarks held out "
        "whole; zeroeval-*: routers trained on the other ZeroEval task",
    )
    s.add_argument("--folds", type=int, default=5, help="cross-fit folds")
    s.add_argument("--max-prompts", type=int, help="cap evaluated prompts (quick runs)")
    s.add_argument("--output", help="folder (or s3:// prefix) for metrics.json, scores.parquet, plot.png")


@command("evaluate", "evaluate a router on the bundled benchmarks", _evaluate_args)
def evaluate(args, ctx: Context) -> int:
    from router_tasks.evaluation.evaluate import evaluate_router
    from router_tasks.evaluation.export import evaluate_to_dir
    from router_tasks.lifecycle.publish import read_champion

    if (args.benchmark or "").startswith("zeroeval-"):
        return _evaluate_many_models(args, ctx)
    if not args.router:
        raise ValueError("--router is required (a train artifact or 'champion')")
    prices = _prices_arg(args.prices)
    if args.output:
        if not args.benchmark:
            raise ValueError("--output needs --benchmark (one of mt-bench, mmlu, gsm8k)")
        result = evaluate_to_dir(
            args.router,
            args.benchmark,
            args.protocol,
            args.output,
            ctx.root,
            folds=args.folds,
            max_prompts=args.max_prompts,
            quality_target=args.quality_target,
            prices=prices,
        )
        return ctx.emit({k: result[k] for k in ("output_dir", "files", "metrics")})
    if args.router == "champion":
        champion = read_champion(ctx.store)
        if champion is None:
            raise FileNotFoundError(f"no champion router in {ctx.store.root}: run the pipeline or `tela publish` first")
        router = champion["router"]
    else:
        router = ctx.ref(args.router)
    return ctx.emit(
        evaluate_router(
            router,
            benchmarks=args.benchmarks,
            protocol=args.protocol,
            max_prompts=args.max_prompts,
            artifact_root=ctx.root,
            quality_target=args.quality_target,
            prices=prices,
        )
    )


def _prices_arg(text: str | None) -> dict[str, float] | None:
    """`--prices` for the RouteLLM benchmarks: {model: $ per 1M tokens}, JSON or a .json file."""
    if text is None:
        return None
    prices = json_or_file(text)
    if not isinstance(prices, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in prices.values()
    ):
        raise ValueError(
            f'--prices: expected a JSON object {{"model": dollars per 1M tokens >= 0}}, got {prices!r:.200}'
        )
    return {str(k): float(v) for k, v in prices.items()}


def _evaluate_many_models(args, ctx: Context) -> int:
    """`tela evaluate --benchmark zeroeval-gsm8k|zeroeval-crux --pool ... --output DIR`."""
    from router_tasks.evaluation.many_models import evaluate_to_dir as many_to_dir

    if not args.output:
        raise ValueError(f"--benchmark {args.benchmark} needs --output DIR")
    if args.router:
        raise ValueError(f"--benchmark {args.benchmark} cross-fits its own routers (--router-types); drop --router")
    pool = [m.strip() for m in args.pool.split(",") if m.strip()] if args.pool else None
    kinds = [k.strip() for k in args.router_types.split(",") if k.strip()]
    result = many_to_dir(
        args.benchmark,
        args.output,
        pool=pool,
        protocol=args.protocol or "crossfit",
        folds=args.folds,
        router_kinds=kinds,
        prices=args.prices,
        cascades=not args.no_cascades,
        artifact_root=ctx.root,
    )
    return ctx.emit({"output_dir": result["output_dir"], "files": result["files"], "metrics": result["metrics"]})


def _calibrate_args(s):
    s.add_argument("--router", default="champion")
    s.add_argument("--input", required=True, help="jsonl/csv/parquet with a 'prompt' column")
    s.add_argument("--share", type=float, help="two models: target share of strong-model calls, 0-1")
    s.add_argument("--budget", type=float, help="many models: mean cost per prompt to stay within")
    s.add_argument("--prices", type=json_arg, help='with --budget: JSON {"model": price per call or per 1M tokens}')
    s.add_argument("--tokens-per-prompt", type=float, help="with --budget: prices are per 1M tokens")


@command("calibrate", "threshold that sends a target share of prompts to the strong model", _calibrate_args)
def calibrate(args, ctx: Context) -> int:
    from router_tasks.evaluation.calibration import calibrate_budget, calibrate_router, read_calibration

    if (args.share is None) == (args.budget is None):
        raise ValueError("give exactly one of --share (two models) or --budget with --prices (many models)")
    if args.budget is not None:
        if not args.prices:
            raise ValueError("--budget needs --prices")
        cal = calibrate_budget(
            args.router,
            args.input,
            args.prices,
            args.budget,
            tokens_per_prompt=args.tokens_per_prompt,
            artifact_root=ctx.root,
        )
    else:
        cal = calibrate_router(args.router, args.input, args.share, artifact_root=ctx.root)
    return ctx.emit({"artifact": cal, "calibration": read_calibration(cal, artifact_root=ctx.root)})


def _publish_args(s):
    s.add_argument("--router", required=True)
    s.add_argument("--evaluation", required=True)
    s.add_argument("--metric", default="mean_apgr")
    s.add_argument("--margin", type=float, default=0.0)


@command("publish", "promote a router if it beats the champion", _publish_args)
def publish(args, ctx: Context) -> int:
    from router_tasks.lifecycle.publish import publish_router

    return ctx.emit(
        publish_router(
            ctx.ref(args.router),
            ctx.ref(args.evaluation),
            metric=args.metric,
            margin=args.margin,
            artifact_root=ctx.root,
        )
    )


def _rollback_args(s):
    pass


@command("rollback", "point champion back at the router it replaced", _rollback_args)
def rollback(args, ctx: Context) -> int:
    from router_tasks.lifecycle.publish import rollback_champion

    return ctx.emit(rollback_champion(ctx.root))


def _score_args(s):
    s.add_argument("--router", default="champion", help="'champion' or a router artifact key/URI")
    s.add_argument("--input", required=True, help="jsonl/csv/parquet with a 'prompt' column")
    s.add_argument("--output", required=True, help="output Parquet path")
    s.add_argument("--prices", help="prices.json-shaped file: adds cost::<model> (predicted $ per prompt)")


@command("score", "score prompts with a router", _score_args)
def score(args, ctx: Context) -> int:
    from router_tasks.routing.scoring import score_prompts

    out = score_prompts(
        args.router,
        args.input,
        args.output,
        artifact_root=ctx.root,
        **({"prices": args.prices} if getattr(args, "prices", None) else {}),
    )
    print(f"scored {len(out)} prompts -> {args.output}")
    return 0


def _route_args(s):
    s.add_argument("--router", default="champion", help="'champion' or a router artifact key/URI")
    s.add_argument("--input", required=True, help="jsonl/csv/parquet with a 'prompt' column")
    s.add_argument("--prices", help="prices.json-shaped file (default: the prices stored with the router)")
    s.add_argument("--pool", help="comma-separated models to route among (default: every model the router knows)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-quality", type=float, help="mean predicted quality to reach, as cheaply as possible")
    g.add_argument("--budget-per-1k", type=float, help="dollars per 1,000 prompts to spend at most")
    g.add_argument("--share", help="MODEL=SHARE: send at most this share of calls to MODEL")
    s.add_argument("--output", required=True, help="output .parquet/.csv/.jsonl: prompt, prompt_id, model, ...")


@command("route", "choose a model per prompt among a pool, by predicted quality and cost", _route_args)
def route(args, ctx: Context) -> int:
    from router_tasks.routing.scoring import route_prompts

    share = None
    if args.share:
        name, _, value = args.share.rpartition("=")
        if not name:
            raise ValueError(f"--share wants MODEL=SHARE, got {args.share!r}")
        share = (name, float(value))
    pool = [m.strip() for m in args.pool.split(",") if m.strip()] if args.pool else None
    out, summary = route_prompts(
        args.router,
        args.input,
        args.output,
        prices=args.prices,
        pool=pool,
        target_quality=args.target_quality,
        budget_per_1k=args.budget_per_1k,
        model_share=share,
        artifact_root=ctx.root,
    )
    print(f"routed {len(out)} prompts -> {args.output}", file=sys.stderr)
    return ctx.emit(summary)
