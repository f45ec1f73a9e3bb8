"""The one interface every router implements, and what every router checks on its inputs.

A router predicts, for each prompt, the expected quality in [0, 1] of every model it
knows (probability of a good answer; a 1-5 score maps to (score - 1) / 4). The strong
model is predicted like any other: it is not assumed perfect. Turning predictions into a
choice is the routing policy's job (`router_tasks.routing.choice`), not the router's.

Beside the interface: `check_labels` (the labels rows usable for training), `label_matrix`
(labels as a prompts x models quality matrix), `resolve_params` (a kind's defaults overlaid
with the given params) and `torch_threads` (torch's CPU threads for a router's work).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.core.schemas import ROUTER_LABEL_COLUMNS as LABEL_COLUMNS
from router_tasks.data.tokens import TOKENIZER_NAME, count_tokens


class Router(ABC):
    #: registry name, e.g. "knn"; set by subclasses
    kind: str = ""
    #: True for routers whose training wants a GPU (hours on a CPU at production sizes):
    #: the DAGs train them on the GPU queue and pool (`defaults.GPU_QUEUE`, `GPU_POOL`).
    #: They still fall back to the CPU where no GPU is visible.
    needs_gpu: bool = False
    #: the prompt representation (a name in `embeddings.REPRESENTATIONS`) the router was
    #: trained on and is served with; None for routers that read no prompt vectors
    representation: str | None = None

    def __init__(self, models: Sequence[str], strong_model: str, weak_model: str, params: dict | None = None):
        self.models = list(models)
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.params = dict(params or {})

    @classmethod
    def identity(cls, params: dict) -> dict:
        """What decides this router's output besides its params and labels: the ids (and,
        where a subclass can tell, the weights' hashes) of models it builds on. It goes into
        the train stage's key, so changing the embedding or base model retrains. Subclasses
        extend the dict (`{**super().identity(params), ...}`)."""
        return {}

    @abstractmethod
    def fit(self, labels: pd.DataFrame) -> Router:
        """Train on a labels table (prompt_id, prompt, model, quality, ...)."""

    @abstractmethod
    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        """One row per prompt, one column per model in `self.models`, values in [0, 1]."""

    @abstractmethod
    def save(self, write_file) -> None:
        """Write weights through `write_file(name, data: bytes)`; config goes in router.json."""

    @classmethod
    @abstractmethod
    def load(cls, read_file, meta: dict) -> Router:
        """Rebuild from `read_file(name) -> bytes` and the saved router.json content."""

    def predict_quality_array(self, prompts: Sequence[str]) -> np.ndarray:
        """`predict_quality` as a float (n_prompts, n_models) array, columns in `self.models`
        order. Routers with a numpy scoring path override it (no DataFrame per call)."""
        return self.predict_quality(prompts).to_numpy(np.float64)

    def strong_win_rate(self, prompts: Sequence[str], quality: pd.DataFrame | np.ndarray | None = None) -> np.ndarray:
        """RouteLLM-compatible score: higher means more need for the strong model.

        Derived from the predicted quality gap, mapped from [-1, 1] to [0, 1]. `quality`:
        the prompts' predicted quality if already computed, as `predict_quality` or
        `predict_quality_array` gives it.
        """
        if isinstance(quality, pd.DataFrame):
            gap = quality[self.strong_model].to_numpy(float) - quality[self.weak_model].to_numpy(float)
        else:
            q = self.predict_quality_array(prompts) if quality is None else quality
            gap = q[:, self.models.index(self.strong_model)] - q[:, self.models.index(self.weak_model)]
        return np.clip((gap + 1.0) / 2.0, 0.0, 1.0)

    # ---- cost: every model's predicted dollars on a prompt (reply length varies) ------
    #: fitted by `fit_costs` (train stage), saved in router.json as "cost_model"
    cost_model: dict | None = None
    #: {model: (input, output) $ per 1M tokens} stored with the router (train --prices)
    prices: dict | None = None

    def fit_costs(self, labels: pd.DataFrame) -> dict:
        """Learn each model's reply length from the labels' `output_tokens` (if present).

        Per model, log(1 + output tokens) is fitted linearly on log(1 + prompt tokens)
        (least squares), and the predicted mean is the log-normal mean exp(mu + s^2/2) - 1;
        a model with fewer than 3 labelled replies gets the mean of the others. Input tokens
        billed = prompt tokens + the labels' median template overhead (`input_tokens` minus
        the prompt's own count). Without `output_tokens` every model is assumed to write
        `DEFAULT_OUTPUT_TOKENS` (and the cost model says so).
        """
        model = {
            "tokenizer": TOKENIZER_NAME,
            "input_offset": 0.0,
            "per_model": {},
            "assumed": True,
            "default_output_tokens": float(DEFAULT_OUTPUT_TOKENS),
        }
        if "output_tokens" in labels.columns and labels["output_tokens"].notna().any():
            df = labels.loc[labels["output_tokens"].notna() & labels["model"].isin(self.models)]
            prompts = df.drop_duplicates("prompt_id")[["prompt_id", "prompt"]]
            n_in = pd.Series(count_tokens(prompts["prompt"].tolist()), index=prompts["prompt_id"].to_numpy())
            x = np.log1p(n_in.reindex(df["prompt_id"]).to_numpy(np.float64))
            y = np.log1p(df["output_tokens"].to_numpy(np.float64).clip(min=0))
            if "input_tokens" in df.columns and df["input_tokens"].notna().any():
                diff = df["input_tokens"].to_numpy(np.float64) - n_in.reindex(df["prompt_id"]).to_numpy(np.float64)
                model["input_offset"] = float(np.nanmedian(diff))
            names = df["model"].to_numpy()
            for m in self.models:
                sel = names == m
                if sel.sum() < 3:
                    continue
                xs, ys = x[sel], y[sel]
                if np.ptp(xs) > 0:
                    b, a = np.polyfit(xs, ys, 1)
                else:
                    a, b = float(ys.mean()), 0.0
                resid = ys - (a + b * xs)
                model["per_model"][m] = {"a": float(a), "b": float(b), "s2": float(resid.var()), "n": int(sel.sum())}
            if model["per_model"]:
                model["assumed"] = False
                model["default_output_tokens"] = float(df["output_tokens"].mean())
        self.cost_model = model
        return model

    def predict_tokens(self, prompts: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
        """(billed input tokens per prompt, predicted output tokens per prompt and model)."""
        cm = self.cost_model or {"input_offset": 0.0, "per_model": {}, "default_output_tokens": DEFAULT_OUTPUT_TOKENS}
        n_in = count_tokens(list(prompts)).astype(np.float64)
        x = np.log1p(n_in)
        out = {}
        for m in self.models:
            p = cm["per_model"].get(m)
            if p is None:
                out[m] = np.full(len(n_in), float(cm["default_output_tokens"]))
            else:
                out[m] = np.expm1(p["a"] + p["b"] * x + p["s2"] / 2.0).clip(min=0.0)
        return n_in + float(cm.get("input_offset", 0.0)), pd.DataFrame(out, columns=list(self.models))

    def predict_cost(
        self, prompts: Sequence[str], prices: dict | None = None, models: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Predicted dollars of sending each prompt to each model (one row per prompt).

        `prices` (or the router's stored `prices`): {model: (input, output) $ per 1M
        tokens}, or one number for both; a model without a price raises, naming it.
        `models`: only these columns (a routing pool), default all the router knows.
        """
        prices = prices if prices is not None else self.prices
        if not prices:
            raise ValueError("no prices: pass prices ({model: [input, output] $ per 1M tokens}) or train with --prices")
        wanted = list(models) if models is not None else list(self.models)
        unknown = [m for m in wanted if m not in self.models]
        if unknown:
            raise ValueError(f"model(s) {unknown} unknown to this router; it knows {self.models}")
        missing = [m for m in wanted if m not in prices]
        if missing:
            raise ValueError(f"no price for model(s) {missing}; prices given for {sorted(prices)}")
        n_in, n_out = self.predict_tokens(prompts)
        cols = {}
        for m in wanted:
            p = prices[m]
            pin, pout = (float(p), float(p)) if isinstance(p, (int, float)) else (float(p[0]), float(p[1]))
            cols[m] = (n_in * pin + n_out[m].to_numpy(np.float64) * pout) / 1e6
        return pd.DataFrame(cols, columns=wanted)


#: reply length assumed when the labels carry no output_tokens
DEFAULT_OUTPUT_TOKENS = 256


def check_labels(labels: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Labels rows usable for training: required columns present, quality in [0, 1].

    Rows whose quality is null (a failed judgement) carry no signal and are dropped;
    anything else out of range is an upstream bug and raises, naming the row.
    """
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table lacks column(s) {missing}; has {list(labels.columns)}")
    df = labels.loc[labels["quality"].notna(), list(LABEL_COLUMNS)].copy()
    df["quality"] = df["quality"].astype(float)
    bad = df[(df["quality"] < 0) | (df["quality"] > 1)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"labels row {bad.index[0]} (prompt_id={row['prompt_id']}, model={row['model']}): "
            f"quality {row['quality']} is outside [0, 1]"
        )
    for col in ("prompt_id", "prompt", "model"):
        nulls = df[df[col].isna()]
        if len(nulls):
            raise ValueError(f"labels row {nulls.index[0]}: {col} is null")
    if models is not None:
        df = df[df["model"].isin(list(models))]
    return df


def resolve_params(router_cls, params: dict | None) -> dict:
    """`router_cls.DEFAULT_PARAMS` overlaid with `params`; unknown names raise.

    The train stage puts the resolved dict in its config, so changing a default in code
    changes the artifact key instead of silently reusing a router trained the old way.
    """
    defaults = dict(getattr(router_cls, "DEFAULT_PARAMS", {}))
    unknown = set(params or {}) - set(defaults)
    if unknown:
        raise ValueError(f"{router_cls.kind} router: unknown param(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(params or {})}


def label_matrix(labels: pd.DataFrame, models: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(prompts table [prompt_id, prompt], quality matrix (n_prompts, n_models) with NaN gaps).

    Duplicate (prompt, model) labels are averaged; prompts are sorted by id so the same
    labels always give the same matrix, whatever their row order.
    """
    df = check_labels(labels, models)
    q = df.groupby(["prompt_id", "model"], sort=True)["quality"].mean().unstack("model")
    q = q.reindex(columns=list(models))
    prompts = df.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"].reindex(q.index)
    table = pd.DataFrame({"prompt_id": q.index.astype(str), "prompt": prompts.to_numpy()})
    return table, q.to_numpy(dtype=np.float64)


def torch_threads(cpu_threads: int, on_gpu: bool, minimum_only: bool = False):
    """Context manager: torch's CPU thread count for a router's work, then restored.

    `cpu_threads` > 0 is used as given. Otherwise, on a GPU nothing changes; on the CPU it
    is the cores the 1-minute load average leaves idle (at least 1): two threads on two
    shared cores thrash (a training step went from 0.07 s to 3 s). `minimum_only` forces
    one thread (tiny test models, where threads cost more than they give).
    """
    import torch  # heavy: only the routers that run torch pay for it

    n = int(cpu_threads)
    if n <= 0 and on_gpu:
        return contextlib.nullcontext()
    if n <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = 1 if minimum_only else max(1, min(torch.get_num_threads(), int(cores - busy + 0.5)))

    @contextlib.contextmanager
    def ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return ctx()
