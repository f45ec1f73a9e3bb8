"""Representations for routing, one plain logistic model each, in-process (no ensemble).

    .venv/bin/python benchmark_scripts/representation_directions.py

On the bundled RouteLLM MMLU labels (GPT-4-1106 vs Mixtral-8x7B): per-prompt cross-fit
(5 random folds) and leave-subject-out (5 folds of whole subjects), the out-of-fold
predicted strong-weak gap of one L2-regularised logistic model per model (C=0.002 on
standardised vectors, the ensemble's form-part C) scored by exact-curve APGR, for

* ``minilm``: MiniLM's vectors (the packaged seed);
* ``minilm-static``: the distilled static table (`static_embeddings`);
* ``minilm-static-fit``: that table refitted inside each training fold to MiniLM's
  vectors of the fold's training prompts (`static_embeddings.fit_token_table`: the
  scored prompts never take part).

Also printed: the mean cosine between each representation's vectors of the scored
prompts and MiniLM's (mapped linearly into MiniLM's space for the static table), which
is how the ridge of the fit was set (0.01 against 0.001, on a subject split of these
prompts' MiniLM vectors, no labels).

A quick direction check for `router_quality.py`'s full columns, which retrain the whole
ensemble per fold. Deterministic: folds are seeded.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from router_tasks.core.prompts import normalize_prompt
from router_tasks.data import routellm as bm
from router_tasks.routers.embeddings import Embedder, _static_table
from router_tasks.routers.selection import exact_apgr
from router_tasks.routers.static_embeddings import FittedStatic, fit_token_table


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gap(x: np.ndarray, train: np.ndarray, test: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x[train])
    out = []
    for q in (strong, weak):
        lr = LogisticRegression(C=0.002, max_iter=2000).fit(scaler.transform(x[train]), (q[train] >= 0.5).astype(int))
        out.append(lr.predict_proba(scaler.transform(x[test]))[:, 1])
    return out[0] - out[1]


def main() -> int:
    from threadpoolctl import threadpool_limits

    load = os.getloadavg()
    table = bm.get_benchmark("mmlu").table(bm.STRONG_MODEL, bm.WEAK_MODEL, split="all").reset_index(drop=True)
    texts = table["prompt"].tolist()
    strong, weak = table["strong_quality"].to_numpy(float), table["weak_quality"].to_numpy(float)
    minilm = Embedder()(texts).astype(np.float64)
    base = _static_table()
    static = Embedder(model="minilm-static")(texts).astype(np.float64)
    normalized = [normalize_prompt(t) for t in texts]
    rng = np.random.default_rng(0)
    subjects = np.unique(table["category"])
    subject_fold = dict(zip(subjects[rng.permutation(len(subjects))], np.arange(len(subjects)) % 5, strict=False))
    protocols = {
        "MMLU leave-subject-out": np.array([subject_fold[s] for s in table["category"]]),
        "MMLU cross-fit": rng.integers(0, 5, len(texts)),
    }
    print(f"# One logistic model per representation (load average at start {load[0]:.2f}; {len(texts)} prompts)")
    print()
    print(
        "| representation | "
        + " | ".join(protocols)
        + " | "
        + " | ".join(f"{p}: cosine to MiniLM" for p in protocols)
        + " |"
    )
    print("|---|" + "---|" * (2 * len(protocols)))
    rows: dict[str, list] = {"minilm": [], "minilm-static": [], "minilm-static-fit": []}
    cosines: dict[str, list] = {k: [] for k in rows}
    with threadpool_limits(1):
        for name, folds in protocols.items():
            score = {k: np.zeros(len(texts)) for k in rows}
            cos = {k: np.zeros(len(texts)) for k in rows}
            for k in range(5):
                test, train = folds == k, folds != k
                t0 = time.perf_counter()
                fitted = FittedStatic(
                    base, fit_token_table(base, [normalized[i] for i in np.flatnonzero(train)], minilm[train])
                )
                fit_vectors = fitted.encode([normalized[i] for i in np.flatnonzero(test)]).astype(np.float64)
                mapping, *_ = np.linalg.lstsq(static[train], minilm[train], rcond=None)
                vectors = {"minilm": minilm, "minilm-static": static, "minilm-static-fit": None}
                for rep, x in vectors.items():
                    if x is None:
                        x = minilm.copy()
                        x[test] = fit_vectors
                        x[train] = fitted.encode([normalized[i] for i in np.flatnonzero(train)])
                    score[rep][test] = gap(x, train, test, strong, weak)
                cos["minilm"][test] = 1.0
                cos["minilm-static"][test] = (unit(static[test] @ mapping) * minilm[test]).sum(axis=1)
                cos["minilm-static-fit"][test] = (fit_vectors * minilm[test]).sum(axis=1)
                print(f"  {name} fold {k + 1}/5: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            for rep in rows:
                rows[rep].append(exact_apgr(score[rep], strong, weak))
                cosines[rep].append(float(cos[rep].mean()))
    for rep in rows:
        print(
            f"| {rep} | "
            + " | ".join(f"{v:.3f}" for v in rows[rep])
            + " | "
            + " | ".join(f"{v:.3f}" for v in cosines[rep])
            + " |"
        )
    end = os.getloadavg()
    print(f"\nload average at end {end[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
