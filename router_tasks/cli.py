"""`tela`: run any stage, the whole pipeline, or score prompts with a router, no Airflow needed.

Stage commands print the artifact reference (JSON) they produced; any command that takes
an artifact accepts that JSON, an artifact key (`stages/ingest/<hash>`) or its full URI.
The artifact root comes from `--artifact-root` or TELA_ARTIFACT_ROOT (default ./artifacts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable


def _json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r:.80}") from None


@dataclass
class Context:
    """What every command handler gets besides its parsed arguments."""

    root: str | None

    @property
    def store(self):
        from router_tasks.core.store import ArtifactStore

        return ArtifactStore(self.root)

    def ref(self, value):
        from router_tasks.core.stage import resolve_ref

        return resolve_ref(value, self.store)

    @staticmethod
    def emit(obj) -> int:
        print(json.dumps(obj, indent=2, default=str))
        return 0


@dataclass
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Context], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated function as the handler of subcommand `name`, whose arguments
    `add_args` declares. `tela --help` lists the commands in the order they are registered."""

    def register(run):
        COMMANDS[name] = Command(help, add_args, run)
        return run

    return register


def _defaults():
    from router_tasks.core import defaults

    return defaults


def _pipeline_params() -> dict:
    from router_tasks.core.params import PIPELINE_PARAMS

    return PIPELINE_PARAMS


# ---- stages ------------------------------------------------------------------------------


def _ingest_args(s):
    s.add_argument("source", help="jsonl/json/csv/parquet path or s3:// URI")
    s.add_argument("--dataset")
    s.add_argument("--format", dest="fmt", choices=["jsonl", "csv", "parquet"])
    s.add_argument("--sample", type=int)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)


@command("ingest", "read a prompt dataset into a prompt table", _ingest_args)
def ingest(args, ctx: Context) -> int:
    from router_tasks.data.ingest import ingest_prompts

    return ctx.emit(ingest_prompts(args.source, dataset=args.dataset, fmt=args.fmt, sample=args.sample,
                                   shards=args.shards, seed=args.seed, artifact_root=ctx.root))


def _file_mode_args(s: argparse.ArgumentParser, model_flag: str) -> None:
    g = s.add_argument_group("file mode (no artifacts, no Airflow)")
    g.add_argument("--input", help="jsonl/csv/parquet file: 'prompt' (generate); 'prompt', 'answer' and "
                                   "'reference_answer' or 'gold_answer'+'gold_type' (judge)")
    g.add_argument(model_flag, dest="model", help="model id the endpoint expects")
    g.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (default: api.openai.com)")
    g.add_argument("--api-key-env", help="environment variable holding the API key")
    g.add_argument("--concurrency", type=int, help="requests in flight")
    g.add_argument("--output", help="output .parquet/.csv/.jsonl: the input columns plus the stage's")


def _generate_args(s):
    s.add_argument("--prompts", help="ingest artifact (artifact mode)")
    s.add_argument("--models", type=_json_arg, default=_defaults().DEMO_MODELS, help="JSON list of endpoints")
    s.add_argument("--max-tokens", type=int, default=96)
    _file_mode_args(s, model_flag="--model")


@command("generate", "answer prompts with OSS models (an artifact, or a file with --input)", _generate_args)
def generate(args, ctx: Context) -> int:
    if args.input:
        return _file_mode(args, ctx.root)
    from router_tasks.labeling.generate import generate_answers

    if not args.prompts:
        raise ValueError("give --prompts ARTIFACT, or --input FILE --model NAME --output FILE")
    return ctx.emit(generate_answers(ctx.ref(args.prompts), models=args.models, max_tokens=args.max_tokens,
                                     artifact_root=ctx.root))


def _judge_args(s):
    s.add_argument("--prompts", help="ingest artifact (artifact mode)")
    s.add_argument("--answers", help="generate artifact (artifact mode)")
    s.add_argument("--judge", type=_json_arg, default=_defaults().DEMO_JUDGE, help="JSON endpoint of the judge")
    s.add_argument("--judges", type=_json_or_file, help="several judges instead: a JSON list of endpoints (or a .json "
                                                         "file), their verdicts voted (--vote)")
    s.add_argument("--vote", choices=["majority", "mean"], default="majority", help="how several judges' verdicts combine")
    s.add_argument("--batch", action="store_true",
                   help="artifact mode: buy the verdicts through the OpenAI Batch API first (half price, waits for it)")
    _file_mode_args(s, model_flag="--judge-model")


@command("judge", "grade answers, exact match or LLM judge (artifacts, or a file with --input)", _judge_args)
def judge(args, ctx: Context) -> int:
    if args.input:
        return _file_mode(args, ctx.root)
    from router_tasks.labeling.judge import judge_answers

    if not (args.prompts and args.answers):
        raise ValueError("give --prompts and --answers ARTIFACTs, or --input FILE --judge-model NAME --output FILE")
    prompts, answers = ctx.ref(args.prompts), ctx.ref(args.answers)
    if args.batch:  # fills the request cache; the judge stage below then reads it
        from router_tasks.labeling.judge_batch import run_judge_batch

        run_judge_batch(prompts, answers, judge=args.judge, judges=args.judges, artifact_root=ctx.root)
    return ctx.emit(judge_answers(prompts, answers, judge=args.judge, judges=args.judges, vote=args.vote,
                                  artifact_root=ctx.root))


def _file_mode(args, root: str | None) -> int:
    from router_tasks.labeling import file_mode

    flag = "--model" if args.command == "generate" else "--judge-model"
    missing = [f for f, v in ((flag, args.model), ("--output", args.output)) if not v]
    if missing:
        raise ValueError(f"--input needs {' and '.join(missing)}")
    common = dict(base_url=args.base_url, api_key_env=args.api_key_env, concurrency=args.concurrency, artifact_root=root)
    if args.command == "generate":
        out, stats = file_mode.generate_file(args.input, args.output, model=args.model, max_tokens=args.max_tokens, **common)
        done = int(out["error"].isna().sum())
        print(f"answered {done} of {len(out)} prompts -> {args.output}")
    else:
        out, stats = file_mode.judge_file(args.input, args.output, judge_model=args.model, **common)
        print(f"graded {int(out['failure_reason'].isna().sum())} of {len(out)} answers -> {args.output}")
    print(json.dumps({k: stats[k] for k in ("requests", "cached", "calls", "retries", "failures", "input_tokens",
                                            "output_tokens") if k in stats}))
    return 0


def _labels_args(s):
    s.add_argument("--prompts", required=True)
    s.add_argument("--judgements", required=True)
    s.add_argument("--no-routellm", action="store_true", help="leave out the bundled RouteLLM labels")


@command("labels", "build the labels table", _labels_args)
def labels(args, ctx: Context) -> int:
    from router_tasks.data.labels import build_labels

    return ctx.emit(build_labels(ctx.ref(args.prompts), ctx.ref(args.judgements), include_routellm=not args.no_routellm,
                                 artifact_root=ctx.root))


def _validate_args(s):
    s.add_argument("--labels", required=True)
    s.add_argument("--min-rows-per-model", type=int, default=5)


@command("validate", "run the data-quality suite on labels", _validate_args)
def validate(args, ctx: Context) -> int:
    from router_tasks.data.validate import validate_labels

    return ctx.emit(validate_labels(ctx.ref(args.labels), min_rows_per_model=args.min_rows_per_model,
                                    artifact_root=ctx.root))


def _train_args(s):
    d = _defaults()
    s.add_argument("--labels", required=True,
                   help="labels artifact, or a parquet/csv/jsonl file with prompt, model and quality (0-1) | "
                        "correct (0/1) | score (1-5), optionally output_tokens (validated first)")
    s.add_argument("--router-type", default=d.ROUTER_TYPE)
    s.add_argument("--strong-model", default=None, help=f"default {d.STRONG_MODEL} if labelled, else the best-scoring model")
    s.add_argument("--weak-model", default=None, help=f"default {d.WEAK_MODEL} if labelled, else the worst-scoring model")
    s.add_argument("--params", type=_json_arg, default=None)
    s.add_argument("--prices", help="prices.json-shaped file {model: [input, output] $ per 1M tokens}, stored with the router")
    s.add_argument("--min-rows-per-model", type=int, default=5, help="with a labels file: labels needed per model")


@command("train", "train a router on validated labels", _train_args)
def train(args, ctx: Context) -> int:
    from router_tasks.routers.train import train_router

    labels, strong, weak = _train_labels(args, ctx)
    prices = _read_prices(args.prices) if getattr(args, "prices", None) else None
    return ctx.emit(train_router(labels, router_type=args.router_type, strong_model=strong,
                                 weak_model=weak, router_params=args.params, artifact_root=ctx.root, prices=prices))


def _is_table_file(value: str) -> bool:
    from pathlib import Path

    return Path(str(value)).suffix.lower() in (".parquet", ".csv", ".jsonl", ".json") and Path(str(value)).is_file()


def _read_prices(value):
    from router_tasks.data.zeroeval import read_prices

    return {m: list(p) for m, p in read_prices(value).items()}


def _train_labels(args, ctx: Context):
    """(labels ref, strong, weak) for `tela train`: a labels file is imported and validated
    first (the same suite as every labels table); strong/weak default to the configured
    pair when both are labelled, else to the best and worst mean quality."""
    from router_tasks.core.stage import load_table

    if _is_table_file(args.labels):
        from router_tasks.data.labels import labels_from_file
        from router_tasks.data.validate import validate_labels

        raw = labels_from_file(args.labels, artifact_root=ctx.root)
        ref = validate_labels(raw, min_rows_per_model=args.min_rows_per_model, artifact_root=ctx.root)
    else:
        ref = ctx.ref(args.labels)
    strong, weak = args.strong_model, args.weak_model
    if strong is None or weak is None:
        d = _defaults()
        table = load_table(ref, ctx.store)
        means = table.dropna(subset=["quality"]).groupby("model")["quality"].mean().sort_values()
        if len(means) < 2:
            raise ValueError(f"labels name {len(means)} model(s); a router needs at least two")
        if d.STRONG_MODEL in means.index and d.WEAK_MODEL in means.index:
            strong, weak = strong or d.STRONG_MODEL, weak or d.WEAK_MODEL
        else:
            strong = strong or str(means.index[-1])
            weak = weak or str(means.index[0] if means.index[0] != strong else means.index[1])
    return ref, strong, weak


# ---- evaluation and publishing -----------------------------------------------------------


def _evaluate_args(s):
    s.add_argument("--router", help="train artifact or 'champion' (not for the zeroeval-* many-model benchmarks)")
    s.add_argument("--benchmarks", nargs="+", default=_defaults().BENCHMARKS, help="without --output: all of these")
    s.add_argument("--benchmark", choices=["mt-bench", "mmlu", "gsm8k", "zeroeval-gsm8k", "zeroeval-crux"],
                   help="with --output: this one (zeroeval-*: many real models, cost-quality curves)")
    s.add_argument("--pool", help="zeroeval-*: comma-separated models (default: a built-in pool of 10)")
    s.add_argument("--router-types", default="knn", help="zeroeval-*: router kinds to cross-fit, e.g. knn,mf,ensemble")
    s.add_argument("--prices", help="zeroeval-*: prices.json-shaped file (default: the bundled one); otherwise JSON "
                                    '{"model": $ per 1M tokens} (or a .json file): the dollars saved at 95%% quality')
    s.add_argument("--quality-target", type=float, default=_pipeline_params()["quality_target"],
                   help="besides 95%%, report the strong-model calls saved at this share of its quality (0-1]")
    s.add_argument("--no-cascades", action="store_true", help="zeroeval-*: one call per prompt only")
    s.add_argument("--protocol", choices=["transfer", "holdout", "crossfit", "leave-group-out"],
                   help="default: the benchmark's own; leave-group-out: folds by MMLU subject, other benchmarks held out "
                        "whole; zeroeval-*: routers trained on the other ZeroEval task")
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
        result = evaluate_to_dir(args.router, args.benchmark, args.protocol, args.output, ctx.root,
                                 folds=args.folds, max_prompts=args.max_prompts, quality_target=args.quality_target,
                                 prices=prices)
        return ctx.emit({k: result[k] for k in ("output_dir", "files", "metrics")})
    if args.router == "champion":
        champion = read_champion(ctx.store)
        if champion is None:
            raise FileNotFoundError(f"no champion router in {ctx.store.root}: run the pipeline or `tela publish` first")
        router = champion["router"]
    else:
        router = ctx.ref(args.router)
    return ctx.emit(evaluate_router(router, benchmarks=args.benchmarks, protocol=args.protocol,
                                    max_prompts=args.max_prompts, artifact_root=ctx.root,
                                    quality_target=args.quality_target, prices=prices))


def _prices_arg(text: str | None) -> dict[str, float] | None:
    """`--prices` for the RouteLLM benchmarks: {model: $ per 1M tokens}, JSON or a .json file."""
    if text is None:
        return None
    prices = _json_or_file(text)
    if not isinstance(prices, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                               for v in prices.values()):
        raise ValueError(f'--prices: expected a JSON object {{"model": dollars per 1M tokens >= 0}}, got {prices!r:.200}')
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
    result = many_to_dir(args.benchmark, args.output, pool=pool, protocol=args.protocol or "crossfit",
                         folds=args.folds, router_kinds=kinds, prices=args.prices, cascades=not args.no_cascades,
                         artifact_root=ctx.root)
    return ctx.emit({"output_dir": result["output_dir"], "files": result["files"], "metrics": result["metrics"]})


def _calibrate_args(s):
    s.add_argument("--router", default="champion")
    s.add_argument("--input", required=True, help="jsonl/csv/parquet with a 'prompt' column")
    s.add_argument("--share", type=float, help="two models: target share of strong-model calls, 0-1")
    s.add_argument("--budget", type=float, help="many models: mean cost per prompt to stay within")
    s.add_argument("--prices", type=_json_arg, help='with --budget: JSON {"model": price per call or per 1M tokens}')
    s.add_argument("--tokens-per-prompt", type=float, help="with --budget: prices are per 1M tokens")


@command("calibrate", "threshold that sends a target share of prompts to the strong model", _calibrate_args)
def calibrate(args, ctx: Context) -> int:
    from router_tasks.evaluation.calibration import calibrate_budget, calibrate_router, read_calibration

    if (args.share is None) == (args.budget is None):
        raise ValueError("give exactly one of --share (two models) or --budget with --prices (many models)")
    if args.budget is not None:
        if not args.prices:
            raise ValueError("--budget needs --prices")
        cal = calibrate_budget(args.router, args.input, args.prices, args.budget,
                               tokens_per_prompt=args.tokens_per_prompt, artifact_root=ctx.root)
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

    return ctx.emit(publish_router(ctx.ref(args.router), ctx.ref(args.evaluation), metric=args.metric,
                                   margin=args.margin, artifact_root=ctx.root))


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
    from router_tasks.routers.scoring import score_prompts

    out = score_prompts(args.router, args.input, args.output, artifact_root=ctx.root,
                        **({"prices": args.prices} if getattr(args, "prices", None) else {}))
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
    from router_tasks.routers.scoring import route_prompts

    share = None
    if args.share:
        name, _, value = args.share.rpartition("=")
        if not name:
            raise ValueError(f"--share wants MODEL=SHARE, got {args.share!r}")
        share = (name, float(value))
    pool = [m.strip() for m in args.pool.split(",") if m.strip()] if args.pool else None
    out, summary = route_prompts(args.router, args.input, args.output, prices=args.prices, pool=pool,
                                 target_quality=args.target_quality, budget_per_1k=args.budget_per_1k,
                                 model_share=share, artifact_root=ctx.root)
    print(f"routed {len(out)} prompts -> {args.output}", file=sys.stderr)
    return ctx.emit(summary)


# ---- serving -----------------------------------------------------------------------------


def _serve_args(s):
    s.add_argument("--router", default="champion",
                   help="'champion' (followed: hot reload when it moves) or a router key/URI")
    s.add_argument("--models", required=True,
                   help="upstream endpoints: a JSON list or a .json file of one, as the pipeline's `models` param")
    auth = s.add_mutually_exclusive_group()
    auth.add_argument("--keys", metavar="KEYS", help="client keys file (tela keys create): every /v1 request needs one")
    auth.add_argument("--no-auth", action="store_true", help="serve without client keys (anyone who reaches the port "
                                                             "spends the upstreams' keys)")
    s.add_argument("--redis-url", default=os.environ.get("TELA_GATEWAY_REDIS_URL"),
                   help="keep the keys' rpm/spend counters in Redis, shared by replicas and workers "
                        "(e.g. redis://127.0.0.1:6379/0; default $TELA_GATEWAY_REDIS_URL, which keeps a "
                        "password out of the process list)")
    s.add_argument("--workers", type=int, default=1, help="gateway processes on the one port (shared-nothing; each "
                                                          "hot-reloads the champion)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get 413")
    s.add_argument("--route-chars", type=int, default=4096,
                   help="prompt characters a router reads when it names no limit of its own")
    s.add_argument("--no-prompt-log", action="store_true",
                   help="traffic log keeps prompt ids, not prompt text (and feedback keeps no comments)")
    s.add_argument("--no-traffic-log", action="store_true", help="write no traffic log at all")
    s.add_argument("--reload-s", type=float, default=10.0, help="how often to look for a new champion/calibration")
    s.add_argument("--cooldown-fails", type=int, default=3, help="failures in a row that cool an upstream down")
    s.add_argument("--cooldown-s", type=float, default=30.0, help="how long an upstream stays cooled down")
    s.add_argument("--access-log", action="store_true", help="log every HTTP request (uvicorn's access log)")


@command("serve", "OpenAI-compatible routing gateway over the champion router", _serve_args)
def serve(args, ctx: Context) -> int:
    from router_tasks.serving.config import GatewayConfig, parse_models_arg
    from router_tasks.serving.server import serve as run_gateway

    if not args.keys and not args.no_auth:
        raise ValueError("give --keys KEYS (create keys with `tela keys create --file KEYS --name NAME`) or "
                         "--no-auth to serve without client keys")
    config = GatewayConfig(parse_models_arg(args.models), router=args.router, artifact_root=ctx.root,
                           keep_prompts=not args.no_prompt_log, log_traffic=not args.no_traffic_log,
                           reload_s=args.reload_s, cooldown_fails=args.cooldown_fails, cooldown_s=args.cooldown_s,
                           keys_file=args.keys, redis_url=args.redis_url, workers=args.workers,
                           max_body_bytes=int(args.max_body_mb * 1024 * 1024), route_chars=args.route_chars)
    run_gateway(config, host=args.host, port=args.port, access_log=args.access_log)
    return 0


def _keys_args(s):
    sub = s.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="add a key; prints it once (the key alone on stdout's last line)")
    create.add_argument("--file", required=True, help="the KEYS file (created if missing; holds hashes only)")
    create.add_argument("--name", required=True, help="the name logs and metrics show for this key")
    create.add_argument("--rpm", type=int, help="requests per minute (default: no limit)")
    create.add_argument("--usd-per-day", type=float, help="upstream dollars per UTC day, from the endpoint prices")
    listing = sub.add_parser("list", help="the keys' names, limits and dates (never a key or a hash)")
    listing.add_argument("--file", required=True)
    revoke = sub.add_parser("revoke", help="revoke the active key of a name (a running gateway sees it within seconds)")
    revoke.add_argument("--file", required=True)
    revoke.add_argument("--name", required=True)


@command("keys", "client keys for `tela serve --keys`: create, list, revoke", _keys_args)
def keys(args, ctx: Context) -> int:
    from router_tasks.serving import keys as client_keys

    if args.keys_command == "create":
        key = client_keys.create_key(args.file, args.name, rpm=args.rpm, usd_per_day=args.usd_per_day)
        limits = ", ".join(x for x in (args.rpm and f"{args.rpm} requests/minute",
                                       args.usd_per_day and f"${args.usd_per_day:g}/day") if x) or "no limits"
        print(f"created key {args.name!r} ({limits}) in {args.file}; this is the only time it is shown:",
              file=sys.stderr)
        print(key)
        return 0
    if args.keys_command == "list":
        return ctx.emit(client_keys.list_keys(args.file))
    return ctx.emit(client_keys.revoke_key(args.file, args.name))


def _drift_args(s):
    s.add_argument("--router", default="champion")
    s.add_argument("--hours", type=float, default=1.0, help="window length, ending now (or at --end)")
    s.add_argument("--end", help="window end, ISO time (default: now)")
    s.add_argument("--settings", type=_json_arg, default={}, help='JSON drift settings, e.g. {"alpha": 0.001}')


@command("drift", "compare the latest traffic window with the router's training prompts", _drift_args)
def drift(args, ctx: Context) -> int:
    from router_tasks.serving.drift import check_latest_window

    return ctx.emit(check_latest_window(window_end=args.end, hours=args.hours, router=args.router,
                                        settings=args.settings, artifact_root=ctx.root))


# ---- the whole run -----------------------------------------------------------------------


def _json_or_file(text: str):
    """JSON text, or the path of a .json file holding it."""
    from pathlib import Path

    stripped = text.strip()
    if stripped[:1] not in ("[", "{", '"') and Path(stripped).is_file():
        try:
            return json.loads(Path(stripped).read_text())
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"{stripped}: not valid JSON ({err.msg}, line {err.lineno})") from None
    return _json_arg(text)


def _pipeline_args(s):
    from router_tasks.core import params

    params.add_arguments(s, json_type=_json_or_file)  # one flag per pipeline parameter: the table's
    s.add_argument("--json", action="store_true", help="print the stage refs and decision as JSON")


@command("pipeline", "run every stage in order, without Airflow (the DAG's stages)", _pipeline_args)
def pipeline(args, ctx: Context) -> int:
    from router_tasks.core import params
    from router_tasks.data import routellm
    from router_tasks.pipeline import run_pipeline

    routellm.iter_benchmarks(args.benchmarks)  # an unknown name fails before any model call
    result = run_pipeline(
        params.from_arguments(args),
        artifact_root=ctx.root,
    )
    if args.json:
        return ctx.emit({k: result[k] for k in ("stages", "decision")})
    print(result["summary"])
    return 0


def _summary_args(s):
    pass


@command("summary", "print the latest run summary", _summary_args)
def summary(args, ctx: Context) -> int:
    print(ctx.store.read_bytes("runs/latest.md").decode())
    return 0


# ---- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """`tela`'s argument parser: one subcommand per registered command."""
    p = argparse.ArgumentParser(prog="tela", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact-root", help="local folder, file:// or s3:// URI (default: $TELA_ARTIFACT_ROOT or ./artifacts)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_args(sub.add_parser(name, help=cmd.help))
    return p


def _exit_on_sigterm() -> None:
    """SIGTERM (a container or job scheduler stopping us) unwinds like Ctrl-C, so the
    `finally` blocks run: replies already paid for are flushed to the request cache."""
    import signal
    import threading

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _exit_on_sigterm()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx = Context(root=args.artifact_root or os.environ.get("TELA_ARTIFACT_ROOT"))
    try:
        return COMMANDS[args.command].run(args, ctx)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Known failure modes (bad input, data quality, missing artifact): a clear line, no traceback.
        print(f"tela {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
