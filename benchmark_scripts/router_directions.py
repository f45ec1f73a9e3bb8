"""Directions for routers on unseen topics (issue 15), each measured on the product's folds.

    .venv/bin/python benchmark_scripts/router_directions.py

One plain model per direction, in-process (not the product's train stage: these are the
experiments that decided what went into the ensemble router, kept so anyone can rerun
them), on the same labels and folds as `router_quality.py`: MMLU leave-subject-out
(`crossfit.assign_group_folds`), GSM8K cross-fit by prompt (`crossfit.assign_folds`),
MT-Bench transfer (trained on MMLU and GSM8K). Every model predicts each model's
correctness with an L2 logistic regression and routes on the predicted gap; every choice a
direction makes from data (calibration) is made on a cluster split of its training fold.

- `embedding`: standardised MiniLM embedding and the text features (`feature_matrix`);
- `form`: the same with separate embedding weights per prompt form (the ensemble's
  `form` component);
- `form + distance shrinkage`: the form model's gap pulled toward the training mean gap
  for prompts far from every training prompt (weight: a logistic of the nearest-neighbour
  cosine similarity around `tau`);
- `form + Platt calibration`: each model's logit recalibrated on a held-out quarter of
  the training fold (whole k-means clusters), the model refit on the rest;
- `tf-idf`: TF-IDF of word 1-2-grams (scikit-learn's `TfidfVectorizer`) alone.

Exact-curve APGR; settings are the fixed values printed (C = 0.002 is what the ensemble's
nested choice picks in most folds).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.crossfit import assign_folds, assign_group_folds
from router_tasks.routers.embeddings import Embedder
from router_tasks.routers.ensemble import FEATURE_NAMES, feature_matrix
from router_tasks.routers.selection import cluster_split

C = 0.002
CHOICES = FEATURE_NAMES.index("has_choices")


def load() -> pd.DataFrame:
    parts = []
    for name in ("mmlu", "gsm8k", "mt-bench"):
        t = bm.get_benchmark(name).table(bm.STRONG_MODEL, bm.WEAK_MODEL, split="all").copy()
        if name == "mt-bench":  # grades 1-10 -> [0, 1], as the labels are
            t[["strong_quality", "weak_quality"]] = (t[["strong_quality", "weak_quality"]] - 1) / 9
        parts.append(t.assign(bench=name))
    return pd.concat(parts, ignore_index=True)


def protocols(t: pd.DataFrame) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """name -> [(training rows, scored rows)] per fold."""
    mm, gs, mt = ((t["bench"] == b).to_numpy() for b in ("mmlu", "gsm8k", "mt-bench"))
    out = {}
    for name, rows, folds in (
        ("MMLU leave-subject-out", mm, assign_group_folds(t.loc[mm, "category"], 5, 0).to_numpy()),
        ("GSM8K cross-fit", gs, assign_folds(t.loc[gs, "prompt_id"], 5, 0).to_numpy()),
    ):
        out[name] = []
        for f in range(int(folds.max()) + 1):
            scored = np.zeros(len(t), bool)
            scored[np.flatnonzero(rows)[folds == f]] = True
            out[name].append((np.flatnonzero(~scored & ~mt), np.flatnonzero(scored)))
    out["MT-Bench transfer"] = [(np.flatnonzero(~mt), np.flatnonzero(mt))]
    return out


def logistic(x_train, y, x_score, c=C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    m = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x_train), (y >= 0.5).astype(int))
    return m.decision_function(scaler.transform(x_score)), m, scaler


def main() -> int:
    from sklearn.feature_extraction.text import TfidfVectorizer

    t0 = time.perf_counter()
    t = load()
    a, b = t["strong_quality"].to_numpy(float), t["weak_quality"].to_numpy(float)
    emb = Embedder()(t["prompt"].tolist()).astype(np.float64)
    feats = feature_matrix(t["prompt"].tolist())
    mc = feats[:, [CHOICES]]
    x_plain, x_form = np.hstack([emb, feats, feats * mc]), np.hstack([emb, emb * mc, feats, feats * mc])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    def gap(x, tr, sc):
        return sigmoid(logistic(x[tr], a[tr], x[sc])[0]) - sigmoid(logistic(x[tr], b[tr], x[sc])[0])

    def shrunk(tau, width=0.05):
        def fn(tr, sc):
            near = (unit[sc] @ unit[tr].T).max(axis=1)
            w = sigmoid((near - tau) / width)
            return w * gap(x_form, tr, sc) + (1 - w) * (a[tr].mean() - b[tr].mean())
        return fn

    def platt(tr, sc):
        from sklearn.linear_model import LogisticRegression

        val = cluster_split(emb[tr], 0.25, 20, 0)
        fit_rows, cal_rows = tr[~val], tr[val]
        out = []
        for y in (a, b):
            _, m, scaler = logistic(x_form[fit_rows], y[fit_rows], x_form[:1])
            z_cal = m.decision_function(scaler.transform(x_form[cal_rows]))
            cal = LogisticRegression(C=100.0).fit(z_cal[:, None], (y[cal_rows] >= 0.5).astype(int))
            out.append(cal.predict_proba(m.decision_function(scaler.transform(x_form[sc]))[:, None])[:, 1])
        return out[0] - out[1]

    def tfidf(tr, sc):
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(t["prompt"].iloc[tr])
        xt, xs = vec.transform(t["prompt"].iloc[tr]), vec.transform(t["prompt"].iloc[sc])
        from sklearn.linear_model import LogisticRegression

        return sum(sign * LogisticRegression(C=1.0, max_iter=2000).fit(xt, (y[tr] >= 0.5).astype(int)).predict_proba(xs)[:, 1]
                   for y, sign in ((a, 1), (b, -1)))

    directions = {
        f"embedding (C={C})": lambda tr, sc: gap(x_plain, tr, sc),
        f"form (C={C})": lambda tr, sc: gap(x_form, tr, sc),
        "form + distance shrinkage (tau 0.5)": shrunk(0.5),
        "form + distance shrinkage (tau 0.6)": shrunk(0.6),
        "form + Platt calibration": platt,
        "tf-idf (C=1)": tfidf,
    }
    folds = protocols(t)
    print(f"# Directions for unseen topics: exact-curve APGR, GPT-4-1106 vs Mixtral-8x7B ({len(t)} prompts)")
    print()
    print("| direction | " + " | ".join(folds) + " |")
    print("|---|" + "---|" * len(folds))
    for name, fn in directions.items():
        cells = []
        for proto, parts in folds.items():
            score = np.full(len(t), np.nan)
            for tr, sc in parts:
                score[sc] = fn(tr, sc)
            m = ~np.isnan(score)
            curve = mx.exact_curve(score[m], a[m], b[m])
            cells.append(f"{mx.apgr(curve, a[m].mean(), b[m].mean()):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print()
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
