"""What every `tela` command shares: the command registry, the context a handler gets,
and argument types."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass


def json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r:.80}") from None


def json_or_file(text: str):
    """JSON text, or the path of a .json file holding it."""
    from pathlib import Path

    stripped = text.strip()
    if stripped[:1] not in ("[", "{", '"') and Path(stripped).is_file():
        try:
            return json.loads(Path(stripped).read_text())
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"{stripped}: not valid JSON ({err.msg}, line {err.lineno})") from None
    return json_arg(text)


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


def library_defaults():
    from router_tasks.core import defaults

    return defaults


def pipeline_params() -> dict:
    from router_tasks.core.params import PIPELINE_PARAMS

    return PIPELINE_PARAMS
