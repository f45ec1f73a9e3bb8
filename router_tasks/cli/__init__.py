"""`tela`: run any stage, the whole pipeline, or score prompts with a router, no Airflow needed.

Stage commands print the artifact reference (JSON) they produced; any command that takes
an artifact accepts that JSON, an artifact key (`stages/ingest/<hash>`) or its full URI.
The artifact root comes from `--artifact-root` or TELA_ARTIFACT_ROOT (default ./artifacts).

Each command imports its stage inside its handler: `tela --help` and a mistyped flag answer
at once instead of after loading pandas, scikit-learn and Great Expectations.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from router_tasks.cli import evaluation, pipeline, serving, stages
from router_tasks.cli.base import COMMANDS, Context

#: the command groups (each registers its commands on import), in the order `tela --help` lists them
GROUPS = (stages, evaluation, serving, pipeline)


def build_parser() -> argparse.ArgumentParser:
    """`tela`'s argument parser: one subcommand per registered command."""
    p = argparse.ArgumentParser(prog="tela", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--artifact-root", help="local folder, file:// or s3:// URI (default: $TELA_ARTIFACT_ROOT or ./artifacts)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    group = {module.__name__: i for i, module in enumerate(GROUPS)}
    # a stable sort: within a group, the commands stay in the order they were registered
    for name, cmd in sorted(COMMANDS.items(), key=lambda item: group[item[1].run.__module__]):
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
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    ctx = Context(root=args.artifact_root or os.environ.get("TELA_ARTIFACT_ROOT"))
    try:
        return COMMANDS[args.command].run(args, ctx)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Known failure modes (bad input, data quality, missing artifact): a clear line, no traceback.
        print(f"tela {args.command}: error: {err}", file=sys.stderr)
        return 2
