"""`tela pipeline | summary`: every stage in order, without Airflow, and the run's summary."""

from __future__ import annotations

from router_tasks.cli.base import Context, command, json_or_file


def _pipeline_args(s):
    from router_tasks.core import params

    params.add_arguments(s, json_type=json_or_file)  # one flag per pipeline parameter: the table's
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
