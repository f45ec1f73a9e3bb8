"""The one pipeline parameter table (router_tasks/core/params.py) is the only source of
`tela pipeline`'s flags: every flag is a table row's, with its default, and parsing no
flags gives the pipeline's defaults. (The DAG side: tests/dags/test_pipeline_drift.py.)"""

from __future__ import annotations

import argparse

import pytest

from router_tasks.cli import build_parser
from router_tasks.core.params import BY_NAME, PIPELINE_PARAMS, TABLE, TYPES, from_arguments


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def check_flags_are_the_table(parser: argparse.ArgumentParser) -> None:
    own = {"help", "json"}  # argparse's, and how the command prints its result
    flags = {}
    for action in parser._actions:
        if action.dest in own:
            continue
        assert action.dest in BY_NAME, f"tela pipeline {action.option_strings}: no pipeline parameter {action.dest!r}"
        row = BY_NAME[action.dest]
        assert action.option_strings == [row.flag], f"{row.name}: flag {action.option_strings}, table {row.flag}"
        assert action.default == row.default, f"{row.flag}: default {action.default!r}, table {row.default!r}"
        flags[row.name] = row.flag
    assert flags == {p.name: p.flag for p in TABLE if p.flag}, "a table row's flag is missing from tela pipeline"


def test_tela_pipeline_flags_are_the_table_rows():
    check_flags_are_the_table(_subparser(build_parser(), "pipeline"))


def test_a_drifted_flag_is_caught():
    parser = _subparser(build_parser(), "pipeline")
    action = next(a for a in parser._actions if a.dest == "max_tokens")
    action.default = 1000
    with pytest.raises(AssertionError, match="--max-tokens"):
        check_flags_are_the_table(parser)
    parser.add_argument("--stray", type=int)
    action.default = BY_NAME["max_tokens"].default
    with pytest.raises(AssertionError, match="stray"):
        check_flags_are_the_table(parser)


def test_no_flags_give_the_pipeline_defaults_and_flags_reach_their_parameter():
    args = build_parser().parse_args(["pipeline"])
    given = from_arguments(args)
    assert given == {k: v for k, v in PIPELINE_PARAMS.items() if BY_NAME[k].flag}
    args = build_parser().parse_args(
        [
            "pipeline",
            "--cpu",
            "--no-routellm",
            "--reference",
            "null",
            "--benchmarks",
            "mmlu",
            "--judges",
            '[{"name": "a"}]',
            "--quality-target",
            "0.9",
        ]
    )
    given = from_arguments(args)
    assert (given["use_gpu"], given["include_routellm"], given["reference_model"]) == (False, False, None)
    assert (given["benchmarks"], given["judges"], given["quality_target"]) == (["mmlu"], [{"name": "a"}], 0.9)


def test_every_row_is_well_formed():
    for p in TABLE:
        assert p.type in TYPES and p.help.strip(), p.name
        assert (p.type == "array") == (p.items is not None), p.name
        assert p.default is None or p.nullable or p.type != "object" or isinstance(p.default, dict), p.name
        if p.enum:
            assert p.default in p.enum, p.name
        if p.type == "boolean" and p.flag:
            assert p.flag_help, f"{p.name}: a boolean's flag turns it off and says so"
    assert list(PIPELINE_PARAMS) == [p.name for p in TABLE]
