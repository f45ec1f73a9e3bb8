"""The many-model evaluation's data: a task's recorded outcomes for a pool of models
(`load_task`, from the bundled ZeroEval replies, `data.zeroeval`), split into folds by
prompt (`assign_folds`), and the other task a leave-task-out router trains on
(`other_task`, `transfer_pool`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from router_tasks.data import zeroeval as ze

#: folds by prompt within the task, or by task (routers trained on the other bundled task)
CROSSFIT, LEAVE_TASK_OUT = "crossfit", "leave-group-out"
PROTOCOLS = (CROSSFIT, LEAVE_TASK_OUT)


@dataclass
class TaskData:
    task: str
    pool: list[str]
    prompt_ids: np.ndarray
    prompts: list[str]
    folds: np.ndarray
    correct: np.ndarray  # (n, m) bool
    cost: np.ndarray  # (n, m) recorded $ of each call
    answers: np.ndarray  # (n, m) normalised answers (None = no answer)
    input_tokens: np.ndarray  # (n,)
    tables: dict  # column -> (prompt_id x model) DataFrame
    prices: dict

    def frame(self, column: str) -> pd.DataFrame:
        return self.tables[column]

    @property
    def n(self) -> int:
        return len(self.prompt_ids)


def assign_folds(prompt_ids: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Balanced, deterministic folds by prompt: ids ordered by a salted hash, dealt round-robin."""
    order = sorted(
        range(len(prompt_ids)), key=lambda i: hashlib.sha256(f"tela-mm-{seed}:{prompt_ids[i]}".encode()).hexdigest()
    )
    out = np.empty(len(prompt_ids), dtype=np.int64)
    out[order] = np.arange(len(prompt_ids)) % int(folds)
    return out


def load_task(
    task: str, pool: Sequence[str] | None = None, prices: dict | None = None, folds: int = 5, seed: int = 0
) -> TaskData:
    """The pool's recorded outcomes on the prompts every pool model answered."""
    task = ze.BENCHMARKS.get(task, task)
    pool = list(pool or ze.POOLS[task])
    if len(set(pool)) != len(pool):
        raise ValueError(f"pool names a model twice: {pool}")
    prices = ze.read_prices(prices) if prices is not None else ze.bundled_prices()
    missing = [m for m in pool if m not in prices]
    if missing:
        raise ValueError(f"no price for pool model(s) {missing}")
    r = ze.results(task, models=pool)
    counts = r.groupby("prompt_id")["model"].nunique()
    keep = set(counts[counts == len(pool)].index)
    r = r[r["prompt_id"].isin(keep)]
    tables = {
        c: r.pivot(index="prompt_id", columns="model", values=c).reindex(columns=pool).sort_index()
        for c in ("correct", "answer", "has_answer", "parsed_json", "output_tokens", "reasoning_chars")
    }
    first = r.drop_duplicates("prompt_id").set_index("prompt_id").reindex(tables["correct"].index)
    ids = tables["correct"].index.to_numpy().astype(str)
    n_in = first["input_tokens"].to_numpy(np.float64)
    out_tok = tables["output_tokens"].to_numpy(np.float64)
    cost = np.column_stack([ze.call_cost(n_in, out_tok[:, j], prices[m]) for j, m in enumerate(pool)])
    answers = np.empty(out_tok.shape, dtype=object)
    raw = tables["answer"].to_numpy(object)
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            answers[i, j] = ze.normalized_answer(task, raw[i, j])
    return TaskData(
        task=task,
        pool=pool,
        prompt_ids=ids,
        prompts=first["question"].astype(str).tolist(),
        folds=assign_folds(ids, folds, seed),
        correct=tables["correct"].to_numpy(bool),
        cost=cost,
        answers=answers,
        input_tokens=n_in,
        tables=tables,
        prices={m: prices[m] for m in pool},
    )


def other_task(task: str) -> str:
    """The bundled task a leave-task-out router trains on when it is scored on `task`."""
    task = ze.BENCHMARKS.get(task, task)
    others = [t for t in ze.BENCHMARKS.values() if t != task]
    if len(others) != 1:
        raise ValueError(f"leave-task-out needs exactly one other bundled task than {task!r}; have {others}")
    return others[0]


def transfer_pool(task: str, train_task: str, pool: Sequence[str] | None) -> list[str]:
    """The pool for scoring `task` with routers trained on `train_task`: the given one
    (every model must have replies in both), or `task`'s default pool less the models
    `train_task` has no replies from."""
    both = set(ze.results(train_task)["model"]) & set(ze.results(task)["model"])
    if pool is not None:
        missing = [m for m in pool if m not in both]
        if missing:
            raise ValueError(
                f"leave-task-out on {task!r}: pool model(s) {missing} have no replies in both "
                f"{task!r} and {train_task!r} (a router can only learn a model it has labels for)"
            )
        return list(pool)
    return [m for m in ze.POOLS[task] if m in both]
