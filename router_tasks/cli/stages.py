"""`tela ingest | generate | judge | labels | validate | train`: one pipeline stage at a time."""

from __future__ import annotations

import argparse
import json

from router_tasks.cli.base import Context, command, json_arg, json_or_file, library_defaults, pipeline_params


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

    return ctx.emit(
        ingest_prompts(
            args.source,
            dataset=args.dataset,
            fmt=args.fmt,
            sample=args.sample,
            shards=args.shards,
            seed=args.seed,
            artifact_root=ctx.root,
        )
    )


def _file_mode_args(s: argparse.ArgumentParser, model_flag: str) -> None:
    g = s.add_argument_group("file mode (no artifacts, no Airflow)")
    g.add_argument(
        "--input",
        help="jsonl/csv/parquet file: 'prompt' (generate); 'prompt', 'answer' and "
        "'reference_answer' or 'gold_answer'+'gold_type' (judge)",
    )
    g.add_argument(model_flag, dest="model", help="model id the endpoint expects")
    g.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (default: api.openai.com)")
    g.add_argument("--api-key-env", help="environment variable holding the API key")
    g.add_argument("--concurrency", type=int, help="requests in flight")
    g.add_argument("--output", help="output .parquet/.csv/.jsonl: the input columns plus the stage's")


def _generate_args(s):
    s.add_argument("--prompts", help="ingest artifact (artifact mode)")
    s.add_argument("--models", type=json_arg, default=library_defaults().DEMO_MODELS, help="JSON list of endpoints")
    s.add_argument("--max-tokens", type=int, default=pipeline_params()["max_tokens"])
    _file_mode_args(s, model_flag="--model")


@command("generate", "answer prompts with OSS models (an artifact, or a file with --input)", _generate_args)
def generate(args, ctx: Context) -> int:
    if args.input:
        return _file_mode(args, ctx.root)
    from router_tasks.labeling.generate import generate_answers

    if not args.prompts:
        raise ValueError("give --prompts ARTIFACT, or --input FILE --model NAME --output FILE")
    return ctx.emit(
        generate_answers(ctx.ref(args.prompts), models=args.models, max_tokens=args.max_tokens, artifact_root=ctx.root)
    )


def _judge_args(s):
    s.add_argument("--prompts", help="ingest artifact (artifact mode)")
    s.add_argument("--answers", help="generate artifact (artifact mode)")
    s.add_argument("--judge", type=json_arg, default=library_defaults().DEMO_JUDGE, help="JSON endpoint of the judge")
    s.add_argument(
        "--judges",
        type=json_or_file,
        help="several judges instead: a JSON list of endpoints (or a .json file), their verdicts voted (--vote)",
    )
    s.add_argument(
        "--vote",
        choices=["majority", "mean"],
        default=pipeline_params()["judge_vote"],
        help="how several judges' verdicts combine",
    )
    s.add_argument(
        "--batch",
        action="store_true",
        help="artifact mode: buy the verdicts through the OpenAI Batch API first (half price, waits for it)",
    )
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
    return ctx.emit(
        judge_answers(prompts, answers, judge=args.judge, judges=args.judges, vote=args.vote, artifact_root=ctx.root)
    )


def _file_mode(args, root: str | None) -> int:
    from router_tasks.labeling import file_mode

    flag = "--model" if args.command == "generate" else "--judge-model"
    missing = [f for f, v in ((flag, args.model), ("--output", args.output)) if not v]
    if missing:
        raise ValueError(f"--input needs {' and '.join(missing)}")
    common = dict(
        base_url=args.base_url, api_key_env=args.api_key_env, concurrency=args.concurrency, artifact_root=root
    )
    if args.command == "generate":
        out, stats = file_mode.generate_file(
            args.input, args.output, model=args.model, max_tokens=args.max_tokens, **common
        )
        done = int(out["error"].isna().sum())
        print(f"answered {done} of {len(out)} prompts -> {args.output}")
    else:
        out, stats = file_mode.judge_file(args.input, args.output, judge_model=args.model, **common)
        print(f"graded {int(out['failure_reason'].isna().sum())} of {len(out)} answers -> {args.output}")
    print(
        json.dumps(
            {
                k: stats[k]
                for k in ("requests", "cached", "calls", "retries", "failures", "input_tokens", "output_tokens")
                if k in stats
            }
        )
    )
    return 0


def _labels_args(s):
    s.add_argument("--prompts", required=True)
    s.add_argument("--judgements", required=True)
    s.add_argument("--no-routellm", action="store_true", help="leave out the bundled RouteLLM labels")


@command("labels", "build the labels table", _labels_args)
def labels(args, ctx: Context) -> int:
    from router_tasks.data.labels import build_labels

    return ctx.emit(
        build_labels(
            ctx.ref(args.prompts),
            ctx.ref(args.judgements),
            include_routellm=not args.no_routellm,
            artifact_root=ctx.root,
        )
    )


def _validate_args(s):
    s.add_argument("--labels", required=True)
    s.add_argument("--min-rows-per-model", type=int, default=pipeline_params()["min_rows_per_model"])


@command("validate", "run the data-quality suite on labels", _validate_args)
def validate(args, ctx: Context) -> int:
    from router_tasks.data.validate import validate_labels

    return ctx.emit(
        validate_labels(ctx.ref(args.labels), min_rows_per_model=args.min_rows_per_model, artifact_root=ctx.root)
    )


def _train_args(s):
    d = library_defaults()
    s.add_argument(
        "--labels",
        required=True,
        help="labels artifact, or a parquet/csv/jsonl file with prompt, model and quality (0-1) | "
        "correct (0/1) | score (1-5), optionally output_tokens (validated first)",
    )
    s.add_argument("--router-type", default=d.ROUTER_TYPE)
    s.add_argument(
        "--strong-model", default=None, help=f"default {d.STRONG_MODEL} if labelled, else the best-scoring model"
    )
    s.add_argument(
        "--weak-model", default=None, help=f"default {d.WEAK_MODEL} if labelled, else the worst-scoring model"
    )
    s.add_argument("--params", type=json_arg, default=None)
    s.add_argument(
        "--prices", help="prices.json-shaped file {model: [input, output] $ per 1M tokens}, stored with the router"
    )
    s.add_argument(
        "--min-rows-per-model",
        type=int,
        default=pipeline_params()["min_rows_per_model"],
        help="with a labels file: labels needed per model",
    )


@command("train", "train a router on validated labels", _train_args)
def train(args, ctx: Context) -> int:
    from router_tasks.training.train import train_router

    labels, strong, weak = _train_labels(args, ctx)
    prices = _read_prices(args.prices) if getattr(args, "prices", None) else None
    return ctx.emit(
        train_router(
            labels,
            router_type=args.router_type,
            strong_model=strong,
            weak_model=weak,
            router_params=args.params,
            artifact_root=ctx.root,
            prices=prices,
        )
    )


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
        d = library_defaults()
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
