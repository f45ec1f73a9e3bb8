"""The ONE table of pipeline parameters: name, type, default, help and CLI flag of each.

Everything else is derived from `TABLE`:
- `PIPELINE_PARAMS` (also `router_tasks.pipeline.PARAMS`, and what `lifecycle.loop_settings` layers):
  every parameter of a run with its default;
- the DAGs' trigger-form params: `param_specs()` gives plain dicts (default, description
  and JSON-schema keywords) that `plugins/tela_params.py` turns into `Param(**spec)` (the
  library never imports Airflow);
- `tela pipeline`'s flags (`add_arguments`): the flag, its parsing, default and help, and
  the parsed values back as parameters (`from_arguments`);
- the settings reference, docs/settings.md (`router_tasks.core.settings`).

Types are JSON-schema types ("string", "integer", "number", "boolean", "object",
"array"); `nullable` adds "null" (the form's empty value). A boolean's CLI flag turns it
off (`--cpu`, `--no-routellm`), so it has its own `flag_help`.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router_tasks.core import defaults

TYPES = ("string", "integer", "number", "boolean", "object", "array")


@dataclass(frozen=True)
class PipelineParam:
    """One pipeline parameter. `flag`: its `tela pipeline` flag (None: DAG only). `items`:
    the element type of an array. `enum`, `minimum`, `maximum`, `exclusive_minimum`:
    JSON-schema limits the trigger form checks (the CLI takes `enum` as its choices)."""

    name: str
    type: str
    default: Any
    help: str
    flag: str | None = None
    nullable: bool = False
    items: str | None = None
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    flag_help: str | None = None

    def schema(self, enum: Sequence[str] | None = None) -> dict:
        """The JSON-schema keywords of the DAG's `Param` (`enum` overrides the table's)."""
        out: dict = {"type": ["null", self.type] if self.nullable else self.type}
        if self.items:
            out["items"] = {"type": self.items}
        choices = enum if enum is not None else self.enum
        if choices is not None:
            out["enum"] = list(choices)
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("exclusiveMinimum", self.exclusive_minimum),
        ):
            if value is not None:
                out[key] = value
        return out

    def spec(self, enum: Sequence[str] | None = None) -> dict:
        """`Param(**spec)` keyword arguments: a fresh copy of the default, the help as its
        description, and the schema."""
        return {"default": copy.deepcopy(self.default), "description": self.help, **self.schema(enum)}


TABLE: tuple[PipelineParam, ...] = (
    PipelineParam(
        "source",
        "string",
        defaults.DEMO_PROMPTS,
        flag="--source",
        help="the prompts to label: a jsonl/json/csv/parquet path on the workers, an s3:// URI, or a "
        "traffic window traffic://<from>/<to> of the gateway's log",
    ),
    PipelineParam(
        "sample", "integer", None, nullable=True, flag="--sample", help="keep at most this many prompts (empty: all)"
    ),
    # `items` with type object: the trigger form gives a JSON editor (a plain list would be a
    # textarea showing "[object Object]" that breaks the conf on any edit).
    PipelineParam(
        "models",
        "array",
        defaults.DEMO_MODELS,
        items="object",
        flag="--models",
        help='OSS endpoints to label, each {"name", "model", "base_url", optional "conn_id" + '
        '"api_key_env" (the key from an Airflow connection), "max_tokens", "concurrency", prices}; '
        'base_url "local" is the bundled SmolLM2 server',
    ),
    PipelineParam(
        "judge",
        "object",
        defaults.DEMO_JUDGE,
        flag="--judge",
        help="the judge endpoint that scores every answer (same fields as a models entry; "
        '"verdict": auto | logprobs | continue | text, see docs/labeling.md)',
    ),
    PipelineParam(
        "judges",
        "array",
        None,
        nullable=True,
        items="object",
        flag="--judges",
        help="several judge endpoints instead of `judge`, each asked every answer, their verdicts voted "
        "(judge_vote); empty: `judge` alone",
    ),
    PipelineParam(
        "judge_vote",
        "string",
        "majority",
        enum=("majority", "mean"),
        flag="--judge-vote",
        help="how several judges' verdicts combine: the most frequent score, or the mean expected score rounded",
    ),
    PipelineParam(
        "judge_agreement_sample",
        "integer",
        50,
        minimum=0,
        flag="--judge-agreement-sample",
        help="gold-graded answers (a seeded sample) also asked of the judge, to measure its agreement "
        "with exact match; 0: none",
    ),
    PipelineParam(
        "judge_min_agreement",
        "number",
        None,
        nullable=True,
        minimum=0,
        maximum=1,
        flag="--judge-min-agreement",
        help="stop the run when the judge agrees with exact match on fewer than this share of the sampled "
        "answers (empty: the configured data-quality threshold, off by default)",
    ),
    PipelineParam(
        "judge_mode",
        "string",
        "online",
        enum=("online", "batch"),
        flag="--judge-mode",
        help="batch: the OpenAI Batch API (half price, up to 24 h) through judge_batch_conn_id",
    ),
    PipelineParam(
        "judge_batch_conn_id",
        "string",
        defaults.JUDGE_BATCH_CONN_ID,
        help="Airflow OpenAI connection for batch mode (host = the judge's base URL)",
    ),
    PipelineParam(
        "reference_model",
        "object",
        defaults.DEMO_REFERENCE,
        nullable=True,
        flag="--reference",
        help="endpoint (the strong model) that writes missing reference answers; null: none",
    ),
    PipelineParam(
        "max_tokens",
        "integer",
        96,
        minimum=1,
        flag="--max-tokens",
        help="answer length limit per generated reply (an endpoint's own max_tokens wins)",
    ),
    PipelineParam(
        "include_routellm",
        "boolean",
        True,
        flag="--no-routellm",
        help="add the bundled RouteLLM labels",
        flag_help="leave out the bundled RouteLLM labels: train on the run's own labels only",
    ),
    PipelineParam(
        "routellm_max_prompts",
        "integer",
        None,
        nullable=True,
        flag="--routellm-max-prompts",
        help="cap bundled prompts per benchmark (quick runs)",
    ),
    PipelineParam(
        "min_rows_per_model", "integer", 5, flag="--min-rows-per-model", help="labels needed per model to train"
    ),
    PipelineParam(
        "router_params",
        "object",
        {},
        flag="--router-params",
        help='router settings, e.g. {"k": 50} or, for causal_llm, {"base_model": "/models/Llama-3.2-1B", '
        '"device": "cuda"}',
    ),
    PipelineParam(
        "use_gpu",
        "boolean",
        True,
        flag="--cpu",
        help="GPU routers (causal_llm) train and are scored on the gpu queue and use a GPU when present; "
        "off pins them to the CPU, normal queue",
        flag_help="train GPU routers on the CPU",
    ),
    # the trigger form's choices are the router registry's kinds (the DAG passes them)
    PipelineParam(
        "router_type",
        "string",
        defaults.ROUTER_TYPE,
        flag="--router-type",
        help="the router to train (causal_llm trains on the gpu queue)",
    ),
    PipelineParam(
        "strong_model",
        "string",
        defaults.STRONG_MODEL,
        flag="--strong-model",
        help="the costly model the router falls back to: a model name in the labels",
    ),
    PipelineParam(
        "weak_model",
        "string",
        defaults.WEAK_MODEL,
        flag="--weak-model",
        help="the cheap model the router sends easy prompts to: a model name in the labels",
    ),
    PipelineParam(
        "benchmarks",
        "array",
        defaults.BENCHMARKS,
        items="string",
        flag="--benchmarks",
        help="bundled benchmarks each trained router is evaluated on (mmlu, gsm8k, mt-bench; the form "
        "takes one per line)",
    ),
    PipelineParam(
        "eval_max_prompts",
        "integer",
        None,
        nullable=True,
        flag="--eval-max-prompts",
        help="cap evaluated prompts per benchmark (quick runs)",
    ),
    # the enum is router_tasks.core.schemas.STRONG_QUALITY_MODES (not imported: it brings pandas to `tela --help`)
    PipelineParam(
        "strong_quality",
        "string",
        "labeled",
        enum=("labeled", "assume_perfect"),
        flag="--strong-quality",
        help="labeled: the strong model is one of `models`, judged like the others; assume_perfect: never "
        "asked for labels, counts as 5/5 (its answer is the reference)",
    ),
    PipelineParam(
        "quality_target",
        "number",
        0.95,
        exclusive_minimum=0,
        maximum=1,
        flag="--quality-target",
        help="the evaluation also reports the strong-model calls (and dollars) saved at this share of the "
        "strong model's quality (beside 95%)",
    ),
)
BY_NAME: dict[str, PipelineParam] = {p.name: p for p in TABLE}
#: every parameter of a pipeline run, with its default (the offline demo)
PIPELINE_PARAMS: dict[str, Any] = {p.name: p.default for p in TABLE}
#: what a `from_loop` parameter's description adds
LOOP_EMPTY = " (empty: from the loop's settings: the labels', the champion's, Variable tela_loop_settings)"


def param_specs(
    names: Iterable[str] | None = None,
    *,
    enums: Mapping[str, Sequence[str]] | None = None,
    from_loop: Iterable[str] = (),
) -> dict[str, dict]:
    """{name: `Param(**spec)` keywords} for `names` (default: every parameter), in table order
    given `names=None`, else in the order given.

    `enums`: choices only the caller knows (the router registry's kinds for `router_type`).
    `from_loop`: parameters that default to empty, meaning "the loop's settings" (what a
    scheduled run, which never gets a conf, must use instead of the demo's values)."""
    enums, from_loop = dict(enums or {}), set(from_loop)
    out = {}
    for name in PIPELINE_PARAMS if names is None else names:
        p = BY_NAME[name]
        spec = p.spec(enums.get(name))
        if name in from_loop:
            spec["default"] = None
            spec["type"] = ["null", p.type]
            spec["description"] = p.help + LOOP_EMPTY
        out[name] = spec
    return out


# ---- tela pipeline -----------------------------------------------------------------------


def _takes_json(p: PipelineParam) -> bool:
    return p.type == "object" or (p.type == "array" and p.items == "object")


def _cli_help(p: PipelineParam) -> str:
    text = p.flag_help or p.help
    if _takes_json(p):
        text += " (JSON, or a .json file holding it)"
    return text.replace("%", "%%")  # argparse formats help with %


def add_arguments(parser: argparse.ArgumentParser, json_type: Callable[[str], Any]) -> None:
    """One flag per table row with a `flag`, its value stored under the parameter's name:
    strings, integers and numbers as such, objects and lists of objects through `json_type`
    (JSON text or a .json file), lists of strings as words, an enum as choices, a boolean
    as the flag that turns it off."""
    for p in TABLE:
        if not p.flag:
            continue
        kw: dict = {"dest": p.name, "default": p.default, "help": _cli_help(p)}
        if p.type == "boolean":
            kw["action"] = "store_false" if p.default else "store_true"
        else:
            if p.enum:
                kw["choices"] = list(p.enum)
            else:
                kw["metavar"] = p.flag.lstrip("-").replace("-", "_").upper()
            if _takes_json(p):
                kw["type"] = json_type
            elif p.type == "array":
                kw["nargs"] = "*"
            elif p.type in ("integer", "number"):
                kw["type"] = int if p.type == "integer" else float
        parser.add_argument(p.flag, **kw)


def from_arguments(args: argparse.Namespace) -> dict:
    """The parameters `tela pipeline`'s parsed flags give (parameters without a flag keep
    their defaults in `router_tasks.pipeline.resolve_params`)."""
    return {p.name: getattr(args, p.name) for p in TABLE if p.flag}
