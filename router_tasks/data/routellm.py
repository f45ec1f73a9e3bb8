"""RouteLLM's public benchmark results, bundled, and the loaders every stage uses.

The data are per-prompt results published by RouteLLM (lm-sys/RouteLLM, arXiv
2406.18665, Apache-2.0) for gpt-4-1106-preview vs Mixtral-8x7B-Instruct: MMLU and GSM8K
correctness, MT-Bench GPT-4 judge scores, the commercial routers' MT-Bench scores and
the decontamination lists. `scripts/build_routellm_data.py` turns the raw release into
the compact Parquet files under `router_tasks/data/files/routellm/` (see SOURCE.md there).

Benchmarks live behind one class, `Benchmark`, as in RouteLLM's `routellm/evals/
benchmarks.py`: each subclass turns the tables into one row per prompt with the strong
and the weak model's quality, for whatever pair of models the files hold.

Where the data come from: the bundled folder by default; `TELA_ROUTELLM_DATA` or a
`data_dir` argument may name another compact folder *or* a raw RouteLLM release folder
(`mmlu/responses/mmlu_<subject>.csv`, ...): both layouts are read by the same code, so a
different set of MMLU subject files works without rebuilding anything. Reading and writing
the files is `router_tasks.data.routellm_files`; this module is what they mean.

Protocols: MMLU and GSM8K are split by a hash of the prompt id into a fixed ~20%
evaluation holdout (`is_eval_holdout`) and the rest, which `routellm_training_labels`
offers as training labels; evaluation uses only the holdout ("holdout" protocol).
MT-Bench is never trained on here and is evaluated whole ("transfer" protocol).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from router_tasks.data.routellm_files import data_dir, is_raw_release, load_tables, read_tables

log = logging.getLogger(__name__)

BENCHMARKS = ("mmlu", "gsm8k", "mt-bench")
STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"

#: share of MMLU/GSM8K prompts held out for evaluation; the salt makes the split
#: independent of the bits that form the prompt id itself. Changing either changes
#: which prompts are training labels, so it is part of `HOLDOUT_VERSION`.
HOLDOUT_FRACTION = 0.20
HOLDOUT_SALT = "tela-eval-holdout-v1"
HOLDOUT_VERSION = f"{HOLDOUT_SALT}:{HOLDOUT_FRACTION}"


class BenchmarkLookupError(KeyError, ValueError):
    """An unknown benchmark, or a model a benchmark has no results for.

    A KeyError (a lookup that missed) and a ValueError (bad input: the CLI reports it as
    one clean line); its text is the plain message, not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------
# holdout split
# --------------------------------------------------------------------------------------
def is_eval_holdout(pid: str) -> bool:
    """True for the ~20% of prompt ids reserved for evaluation (same answer forever)."""
    digest = hashlib.sha256(f"{HOLDOUT_SALT}:{pid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HOLDOUT_FRACTION


# --------------------------------------------------------------------------------------
# the data files (`routellm_files` reads them)
# --------------------------------------------------------------------------------------
def data_fingerprint(path: str | os.PathLike | None = None) -> str:
    """Hash of the data files: goes into stage configs so new data gives new artifacts."""
    folder = data_dir(path)
    h = hashlib.sha256()
    pattern = "**/*" if is_raw_release(folder) else "*.parquet"
    for f in sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix in (".parquet", ".csv", ".jsonl")):
        h.update(str(f.relative_to(folder)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _contaminated(tables: dict, bench: str) -> set[str]:
    c = tables["contaminated"]
    return set(c.loc[c["benchmark"] == bench, "eval_prompt"])


# --------------------------------------------------------------------------------------
# the benchmarks
# --------------------------------------------------------------------------------------
class Benchmark(ABC):
    """One benchmark: per-prompt quality of each model it has results for.

    `table(strong, weak)` is the one thing evaluation needs: prompt_id, prompt (the text
    the router scores), strong_quality, weak_quality, category, holdout.
    """

    name: str = ""
    #: "holdout": evaluate only `is_eval_holdout` prompts (the rest may be training
    #: labels); "transfer": never trained on, evaluated whole
    protocol: str = "holdout"

    def __init__(self, tables: dict[str, pd.DataFrame]):
        self.tables = tables

    @abstractmethod
    def models(self) -> list[str]:
        """Models this benchmark has results for."""

    @abstractmethod
    def quality(self, decontaminate: bool = True) -> pd.DataFrame:
        """Long table: prompt_id, prompt, category, model, quality (+ correct where binary)."""

    def _check_models(self, *models: str) -> None:
        have = self.models()
        for m in models:
            if m not in have:
                raise BenchmarkLookupError(f"benchmark {self.name!r} has no results for model {m!r}; it has {have}")

    def table(
        self, strong_model: str, weak_model: str, *, decontaminate: bool = True, split: str = "all"
    ) -> pd.DataFrame:
        """One row per prompt; `split` is "all", "eval" (holdout) or "train" (the rest)."""
        if strong_model == weak_model:
            raise ValueError(f"strong and weak model are the same ({strong_model!r})")
        self._check_models(strong_model, weak_model)
        long = self.quality(decontaminate)
        long = long[long["model"].isin([strong_model, weak_model])]
        wide = long.groupby(["prompt_id", "model"], sort=False)["quality"].first().unstack("model")
        wide = wide.reindex(columns=[strong_model, weak_model])
        # join from `meta` keeps the files' prompt order (stable output, easy to audit)
        meta = long.drop_duplicates("prompt_id").set_index("prompt_id")[["prompt", "category"]]
        df = meta.join(wide, how="left")
        df = df.rename(columns={strong_model: "strong_quality", weak_model: "weak_quality"})
        before = len(df)
        df = df.dropna(subset=["strong_quality", "weak_quality"])
        if len(df) < before:
            log.info("%s: dropped %d prompts without a rating for both models", self.name, before - len(df))
        df = df.reset_index()
        df["holdout"] = df["prompt_id"].map(is_eval_holdout).astype(bool)
        if split == "eval":
            df = df[df["holdout"]]
        elif split == "train":
            df = df[~df["holdout"]]
        elif split != "all":
            raise ValueError(f"split must be 'all', 'eval' or 'train', got {split!r}")
        cols = ["prompt_id", "prompt", "strong_quality", "weak_quality", "category", "holdout"]
        return df[cols].reset_index(drop=True).astype({"strong_quality": float, "weak_quality": float})

    def eval_table(self, strong_model: str, weak_model: str, *, decontaminate: bool = True) -> pd.DataFrame:
        """The prompts evaluation may score, following this benchmark's protocol."""
        split = "eval" if self.protocol == "holdout" else "all"
        return self.table(strong_model, weak_model, decontaminate=decontaminate, split=split)


class _CorrectnessBenchmark(Benchmark):
    """Per-prompt 0/1 correctness from a responses CSV (MMLU, GSM8K)."""

    prompts_table = results_table = ""

    def models(self) -> list[str]:
        return sorted(self.tables[self.results_table]["model"].unique())

    def _category(self, prompts: pd.DataFrame) -> pd.Series:
        return pd.Series(None, index=prompts.index, dtype=object)

    def quality(self, decontaminate: bool = True) -> pd.DataFrame:
        prompts = self.tables[self.prompts_table]
        if decontaminate:
            prompts = prompts[~prompts["prompt"].isin(_contaminated(self.tables, self.name))]
        prompts = prompts.assign(category=self._category(prompts))
        # The same question can appear twice in the files (16 times in MMLU, always with
        # the same results): a prompt id is one prompt, so the first occurrence counts.
        prompts = prompts.drop_duplicates("prompt_id", keep="first")
        res = self.tables[self.results_table]
        long = prompts[["row", "prompt_id", "prompt", "category"]].merge(
            res, on="row", how="inner", validate="one_to_many"
        )
        long["correct"] = long["correct"].astype(bool)
        long["quality"] = long["correct"].astype(float)
        return long.drop(columns="row")


class MMLU(_CorrectnessBenchmark):
    name = "mmlu"
    prompts_table, results_table = "mmlu_prompts", "mmlu_results"

    def _category(self, prompts: pd.DataFrame) -> pd.Series:
        return prompts["subject"]


class GSM8K(_CorrectnessBenchmark):
    name = "gsm8k"
    prompts_table, results_table = "gsm8k_prompts", "gsm8k_results"


class MTBench(Benchmark):
    """GPT-4 single-answer grades (1-10) of both turns.

    As in RouteLLM, the router sees only the first turn and the routed model answers both,
    so a prompt's quality is the mean of its two turn scores (RouteLLM averages over all
    turn rows, which is the same mean when both turns are rated). A question missing a
    rating for either model is left out, as RouteLLM leaves out unrated rows.
    """

    name = "mt-bench"
    protocol = "transfer"

    def models(self) -> list[str]:
        return sorted(self.tables["mt_bench_judgements"]["model"].unique())

    def questions(self, decontaminate: bool = True) -> pd.DataFrame:
        q = self.tables["mt_bench_questions"].copy()
        if decontaminate:
            # RouteLLM drops a question if either turn overlaps its training data
            bad = _contaminated(self.tables, self.name)
            q = q[~q["turns"].map(lambda t: any(x in bad for x in t))]
        q["prompt"] = q["turns"].map(lambda t: t[0])
        return q.reset_index(drop=True)

    def quality(self, decontaminate: bool = True) -> pd.DataFrame:
        q = self.questions(decontaminate)
        j = self.tables["mt_bench_judgements"]
        per_turn = j.groupby(["question_id", "model", "turn"], as_index=False)["score"].mean()
        n_turns = q.set_index("question_id")["turns"].map(len)
        # mean over the question's turns; NaN when any turn lacks a rating
        agg = per_turn.groupby(["question_id", "model"]).agg(score=("score", "mean"), rated=("score", "count"))
        agg = agg.reset_index()
        agg["score"] = agg["score"].where(agg["rated"] == agg["question_id"].map(n_turns))
        long = q[["question_id", "prompt_id", "prompt", "category"]].merge(agg, on="question_id", how="inner")
        long["quality"] = long["score"]
        return long[["prompt_id", "prompt", "category", "model", "quality", "question_id"]]


BENCHMARK_CLASSES: dict[str, type[Benchmark]] = {"mmlu": MMLU, "gsm8k": GSM8K, "mt-bench": MTBench}


def get_benchmark(name: str, data: str | os.PathLike | None = None) -> Benchmark:
    if name not in BENCHMARK_CLASSES:
        raise BenchmarkLookupError(f"unknown benchmark {name!r}; known: {list(BENCHMARK_CLASSES)}")
    return BENCHMARK_CLASSES[name](read_tables(str(data_dir(data))))


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def load_benchmark(
    name: str,
    strong_model: str = STRONG_MODEL,
    weak_model: str = WEAK_MODEL,
    *,
    decontaminate: bool = True,
    split: str = "all",
    data: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Per-prompt quality of two models on a benchmark.

    Columns: prompt_id, prompt, strong_quality, weak_quality (MMLU/GSM8K correctness 0/1;
    MT-Bench mean GPT-4 score 1-10 of both turns, `prompt` = first turn), category (MMLU
    subject / MT-Bench category / None), holdout (`is_eval_holdout(prompt_id)`).
    """
    return get_benchmark(name, data).table(strong_model, weak_model, decontaminate=decontaminate, split=split)


def routellm_training_labels(
    models: Sequence[str] | None = None, *, data: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Labels-schema rows from MMLU + GSM8K prompts outside the eval holdout, decontaminated.

    `models`: which models' results to include (default: every model in the files).
    """
    parts = []
    for name in ("mmlu", "gsm8k"):
        bench = get_benchmark(name, data)
        have = bench.models()
        wanted = list(models) if models is not None else have
        unknown = [m for m in wanted if m not in have]
        if unknown:
            raise BenchmarkLookupError(
                f"routellm_training_labels: benchmark {name!r} has no results for {unknown}; it has {have}"
            )
        long = bench.quality(decontaminate=True)
        long = long[long["model"].isin(wanted) & ~long["prompt_id"].map(is_eval_holdout)]
        parts.append(
            pd.DataFrame(
                {
                    "prompt_id": long["prompt_id"].astype(str),
                    "prompt": long["prompt"].astype(str),
                    "model": long["model"].astype(str),
                    "score": pd.array([pd.NA] * len(long), dtype="Int64"),
                    "correct": long["correct"].astype("boolean"),
                    "quality": long["quality"].astype("Float64"),
                    "source": f"routellm:{name}",
                    "benchmark": pd.array([name] * len(long), dtype="string"),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def gsm8k_train_questions(*, data: str | os.PathLike | None = None) -> pd.DataFrame:
    """GSM8K train split: prompt_id, question, gold_answer (the final number, as text)."""
    return load_tables(data)["gsm8k_train"].reset_index(drop=True)


def gsm8k_test_questions(*, decontaminate: bool = True, data: str | os.PathLike | None = None) -> pd.DataFrame:
    """GSM8K test prompts RouteLLM evaluated: prompt_id, question, gold_answer, holdout."""
    t = load_tables(data)
    p = t["gsm8k_prompts"]
    if decontaminate:
        p = p[~p["prompt"].isin(_contaminated(t, "gsm8k"))]
    p = p.drop_duplicates("prompt_id")
    return pd.DataFrame(
        {
            "prompt_id": p["prompt_id"],
            "question": p["prompt"],
            "gold_answer": p["gold_answer"],
            "holdout": p["prompt_id"].map(is_eval_holdout).astype(bool),
        }
    ).reset_index(drop=True)


def mt_bench_questions(*, decontaminate: bool = True, data: str | os.PathLike | None = None) -> pd.DataFrame:
    """MT-Bench: question_id, prompt_id (of turn 1), prompt (turn 1), turns, category, reference."""
    q = MTBench(read_tables(str(data_dir(data)))).questions(decontaminate)
    return q[["question_id", "prompt_id", "prompt", "turns", "category", "reference"]].copy()


def _route_side(answered_by, strong_model: str, weak_model: str) -> str | None:
    """Which side of the pair a commercial router's reported model is, if it says.

    The files name provider models ('gpt-4-turbo@openai', 'mixtral-8x7b-instruct-
    v0.1@fireworks-ai'), not the exact ids of the pair, so match on model family.
    """
    if not isinstance(answered_by, str):
        return None
    name = answered_by.lower()

    def family(model: str) -> str:
        base = model.lower().split("/")[-1]
        return "gpt-4" if base.startswith("gpt-4") else re.split(r"[-_.]", base)[0]

    fs, fw = family(strong_model), family(weak_model)
    hits = [(len(f), side) for f, side in ((fs, "strong"), (fw, "weak")) if name.startswith(f)]
    if not hits or fs == fw:
        return None  # unknown model, or a pair from one family: cannot tell
    return max(hits)[1]  # the more specific family wins ("gpt-4o..." over "gpt-4")


def commercial_router_points(
    *,
    decontaminate: bool = True,
    strong_model: str = STRONG_MODEL,
    weak_model: str = WEAK_MODEL,
    data: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """MT-Bench results of the commercial routers RouteLLM compared against.

    Columns: router, score (mean GPT-4 grade over rated turns, RouteLLM-style: unrated
    rows left out), n_judgements, n_questions, strong_share (fraction of questions the
    router sent to the strong model's family, NaN where the router did not say: Martian
    reports only 'router').
    On all 80 questions this gives Martian 8.3125 and Unify 8.7579 (one Unify turn is
    unrated); `decontaminate=True` restricts to the questions evaluation uses.
    """
    t = read_tables(str(data_dir(data)))
    q = MTBench(t).questions(decontaminate)
    keep = set(q["question_id"])
    j = t["commercial_judgements"]
    j = j[j["question_id"].isin(keep)]
    routes = t["commercial_routes"]
    routes = routes[routes["question_id"].isin(keep)]
    rows = []
    for router, g in j.groupby("router", sort=True):
        rated = g["score"].dropna()
        sides = routes.loc[routes["router"] == router, "answered_by"].map(
            lambda m: _route_side(m, strong_model, weak_model)
        )
        share = float((sides == "strong").mean()) if len(sides) and sides.notna().all() else np.nan
        rows.append(
            {
                "router": router,
                "score": float(rated.mean()) if len(rated) else np.nan,
                "n_judgements": int(len(rated)),
                "n_questions": int(g["question_id"].nunique()),
                "strong_share": share,
            }
        )
    return pd.DataFrame(rows, columns=["router", "score", "n_judgements", "n_questions", "strong_share"])


def iter_benchmarks(names: Iterable[str] | None = None) -> list[str]:
    names = list(BENCHMARKS if names is None else names)
    for n in names:
        if n not in BENCHMARK_CLASSES:
            raise BenchmarkLookupError(f"unknown benchmark {n!r}; known: {list(BENCHMARK_CLASSES)}")
    return names
