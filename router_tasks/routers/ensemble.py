"""Ensemble router: kNN + logistic regression + gradient-boosted trees, averaged.

Three per-model quality predictors over the MiniLM prompt embedding and a few cheap
features of the prompt text (`prompt_features`), each trained on every label a model has:

* ``knn``: the kNN router (`KnnRouter`, its default params), unchanged;
* ``linear``: L2-regularised logistic regression on [standardised embedding, text
  features, text features x "has multiple-choice options"] (the interaction lets the
  length/number-count signal differ between multiple-choice questions and free-form
  problems such as math word problems, where more numbers and sentences mean more steps);
* ``gbt``: histogram gradient-boosted trees on [text features, first `gbt_pca` principal
  components of the embedding].

The predicted quality of a model is the plain mean of the three predictions (equal
weights, not tuned), so the routing score is the mean of the three predicted gaps.
The strong model is predicted like any other.

Soft labels (judge scores mapped to [0, 1]) are fitted as two weighted rows (label 1 with
weight q, label 0 with weight 1 - q); a model whose labels are all one class gets a
constant prediction (its smoothed base rate) from the linear and tree parts.

Everything is deterministic (lbfgs, fixed tree seed, no early stopping). Weights are one
safetensors file of plain arrays: the trees are stored as flattened node tables and
evaluated in numpy (no pickle), all trees of a model at once, so single-prompt calls stay
cheap. scikit-learn is used for fitting only.

5-fold cross-validated APGR on the bundled RouteLLM labels: see benchmark_scripts/router_quality.py.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.common import EmbeddingRouter, label_matrix
from router_tasks.routers.knn import KnnRouter

WEIGHTS_FILE = "ensemble.safetensors"
COMPONENTS = ("knn", "linear", "gbt")

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!]+(?:\s|$)")
_DECIMAL = re.compile(r"\d+\.\d+")
_FRACTION = re.compile(r"\d+/\d+")
_CHOICES = re.compile(r"(?:^|\n)\s*A[.)]\s.*\n\s*B[.)]\s", re.S)
_OPS = set("+-*/=^")
FEATURE_NAMES = (
    "log_chars", "log_words", "log_numbers", "log_distinct_numbers", "log_sentences", "has_decimal",
    "has_percent", "has_fraction", "log_max_number", "has_choices", "has_dollar", "log_operators",
)
_CHOICES_COL = FEATURE_NAMES.index("has_choices")


def prompt_features(prompt: str) -> list[float]:
    """Cheap difficulty features of the prompt text alone (no benchmark name)."""
    numbers = _NUMBER.findall(prompt)
    values = []
    for n in numbers:
        plain = n.replace(",", "")
        if plain.replace(".", "", 1).isdigit():
            values.append(float(plain))
    sentences = [s for s in _SENTENCE_END.split(prompt) if s.strip()]
    return [
        np.log1p(len(prompt)),
        np.log1p(len(prompt.split())),
        np.log1p(len(numbers)),
        np.log1p(len(set(numbers))),
        np.log1p(len(sentences)),
        float(bool(_DECIMAL.search(prompt))),
        float("%" in prompt),
        float(bool(_FRACTION.search(prompt))),
        float(np.log1p(min(max(values), 1e300))) if values else 0.0,
        float(bool(_CHOICES.search(prompt))),
        float("$" in prompt),
        np.log1p(sum(c in _OPS for c in prompt)),
    ]


def feature_matrix(prompts: Sequence[str]) -> np.ndarray:
    return np.asarray([prompt_features(p) for p in prompts], dtype=np.float64).reshape(len(prompts), len(FEATURE_NAMES))


def _linear_inputs(emb: np.ndarray, feats: np.ndarray) -> np.ndarray:
    return np.hstack([emb.astype(np.float64), feats, feats * feats[:, _CHOICES_COL : _CHOICES_COL + 1]])


def _binary_rows(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, 0/1 target, weight): hard labels once, soft labels as two weighted rows."""
    idx = np.arange(len(y))
    soft = (y > 0) & (y < 1)
    rows = np.concatenate([idx, idx[soft]])
    target = np.concatenate([(y >= 0.5).astype(np.int64), np.zeros(int(soft.sum()), np.int64)])
    weight = np.concatenate([np.where(soft, y, 1.0), 1.0 - y[soft]])
    target[: len(y)][soft] = 1
    keep = weight > 0
    return rows[keep], target[keep], weight[keep]


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class EnsembleRouter(EmbeddingRouter):
    kind = "ensemble"
    # The kNN part uses KnnRouter's defaults; C=0.01 and the tree settings are common
    # conservative defaults for ~10k rows (few leaves, large leaves, shrinkage 0.05, 200
    # rounds). Not tuned per fold, but picked after comparing about a dozen variants on the
    # benchmark's seed-0 folds (no nested CV): the result held on fold seeds 1 and 2, which
    # played no part in the choice. Expect some selection optimism in the reported APGR.
    DEFAULT_PARAMS = {
        "knn_k": 200,
        "knn_temperature": 0.2,
        "knn_prior_weight": 2.0,
        "linear_c": 0.01,
        "gbt_pca": 8,
        "gbt_rounds": 200,
        "gbt_learning_rate": 0.05,
        "gbt_max_leaf_nodes": 15,
        "gbt_min_samples_leaf": 40,
        "gbt_l2": 1.0,
        "seed": 0,
    }

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):
        super().__init__(models, strong_model, weak_model, params, embedder)
        p = self.params
        if float(p["linear_c"]) <= 0:
            raise ValueError(f"ensemble router: linear_c must be > 0, got {p['linear_c']}")
        if int(p["gbt_pca"]) < 0 or int(p["gbt_rounds"]) < 0:
            raise ValueError("ensemble router: gbt_pca and gbt_rounds must be >= 0")
        self.knn = KnnRouter(models, strong_model, weak_model, self._knn_params(), embedder=embedder)
        self.w: dict[str, np.ndarray] | None = None  # linear + tree weights, see fit()

    def _knn_params(self) -> dict:
        return {"k": self.params["knn_k"], "temperature": self.params["knn_temperature"],
                "prior_weight": self.params["knn_prior_weight"]}

    @EmbeddingRouter.embedder.setter
    def embedder(self, value) -> None:
        self._embedder = value
        if getattr(self, "knn", None) is not None:
            self.knn.embedder = value

    # ---- training ---------------------------------------------------------------

    def fit(self, labels: pd.DataFrame) -> "EnsembleRouter":
        from sklearn.decomposition import PCA

        prompts, quality = label_matrix(labels, self.models)
        if not len(prompts):
            raise ValueError("ensemble router: no labelled prompts to train on")
        self.knn.embedder = self.embedder
        self.knn.fit(labels)
        texts = prompts["prompt"].tolist()
        emb = self.embed(texts)
        feats = feature_matrix(texts)
        n_models = len(self.models)

        lin_x = _linear_inputs(emb, feats)
        mean = lin_x.mean(axis=0)
        scale = lin_x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        lin_x = (lin_x - mean) / scale

        n_pc = min(int(self.params["gbt_pca"]), len(texts), emb.shape[1])
        if n_pc > 0:
            pca = PCA(n_pc, random_state=int(self.params["seed"])).fit(emb)
            pca_mean, pca_comp = pca.mean_.astype(np.float64), pca.components_.astype(np.float64)
        else:
            pca_mean, pca_comp = np.zeros(emb.shape[1]), np.zeros((0, emb.shape[1]))
        tree_x = np.hstack([feats, (emb - pca_mean) @ pca_comp.T])

        coef = np.zeros((n_models, lin_x.shape[1]))
        intercept = np.zeros(n_models)
        trees = []
        for j in range(n_models):
            has = np.flatnonzero(~np.isnan(quality[:, j]))
            y = quality[has, j]
            rows, target, weight = _binary_rows(y)
            base = _logit(float((y.sum() + 1.0) / (len(y) + 2.0))) if len(y) else 0.0
            if len(np.unique(target)) < 2:  # nothing to separate: the smoothed base rate
                intercept[j] = base
                trees.append(self._constant_tree(base))
                continue
            coef[j], intercept[j] = self._fit_linear(lin_x[has][rows], target, weight)
            trees.append(self._fit_trees(tree_x[has][rows], target, weight))

        self.w = {
            "lin_mean": mean, "lin_scale": scale, "lin_coef": coef, "lin_intercept": intercept,
            "pca_mean": pca_mean, "pca_components": pca_comp,
            **self._pack_trees(trees),
        }
        return self

    def _fit_linear(self, x, y, w) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=float(self.params["linear_c"]), max_iter=2000).fit(x, y, sample_weight=w)
        return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])

    def _fit_trees(self, x, y, w) -> dict:
        from sklearn.ensemble import HistGradientBoostingClassifier

        p = self.params
        gbt = HistGradientBoostingClassifier(
            max_iter=int(p["gbt_rounds"]), learning_rate=float(p["gbt_learning_rate"]),
            max_leaf_nodes=int(p["gbt_max_leaf_nodes"]), min_samples_leaf=int(p["gbt_min_samples_leaf"]),
            l2_regularization=float(p["gbt_l2"]), early_stopping=False, random_state=int(p["seed"]),
        ).fit(x, y, sample_weight=w)
        nodes = [predictors[0].nodes for predictors in gbt._predictors]  # binary: one tree per round
        if any(n["is_categorical"].any() for n in nodes):
            raise RuntimeError("ensemble router: unexpected categorical split")
        return {"base": float(np.ravel(gbt._baseline_prediction)[0]), "nodes": nodes}

    @staticmethod
    def _constant_tree(base: float) -> dict:
        return {"base": base, "nodes": []}

    @staticmethod
    def _pack_trees(trees: list[dict]) -> dict:
        """All trees of all models as flat arrays; node ids become global row numbers.

        Leaves point to themselves, so walking every tree `depth` steps lands on its leaf.
        """
        feature, threshold, left, right, value, nan_left = [], [], [], [], [], []
        roots, owner = [], []
        offset = 0
        depth = 0
        for j, t in enumerate(trees):
            for n in t["nodes"]:
                ids = np.arange(len(n), dtype=np.int64) + offset
                leaf = n["is_leaf"].astype(bool)
                feature.append(np.where(leaf, 0, n["feature_idx"]).astype(np.int64))
                threshold.append(np.where(leaf, 0.0, n["num_threshold"]).astype(np.float64))
                left.append(np.where(leaf, ids, n["left"].astype(np.int64) + offset))
                right.append(np.where(leaf, ids, n["right"].astype(np.int64) + offset))
                value.append(np.where(leaf, n["value"], 0.0).astype(np.float64))
                nan_left.append(n["missing_go_to_left"].astype(np.int8))
                roots.append(offset)
                owner.append(j)
                depth = max(depth, int(n["depth"].max()))
                offset += len(n)

        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return {
            "tree_feature": cat(feature, np.int64), "tree_threshold": cat(threshold, np.float64),
            "tree_left": cat(left, np.int64), "tree_right": cat(right, np.int64),
            "tree_value": cat(value, np.float64), "tree_nan_left": cat(nan_left, np.int8),
            "tree_root": np.asarray(roots, np.int64), "tree_model": np.asarray(owner, np.int64),
            "tree_base": np.asarray([t["base"] for t in trees], np.float64),
            "tree_depth": np.asarray([depth], np.int64),
        }

    # ---- scoring ----------------------------------------------------------------

    def _tree_logits(self, x: np.ndarray) -> np.ndarray:
        w = self.w
        n_models = len(self.models)
        out = np.tile(w["tree_base"], (len(x), 1))
        if not len(w["tree_root"]):
            return out
        node = np.broadcast_to(w["tree_root"], (len(x), len(w["tree_root"]))).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(int(w["tree_depth"][0])):
            v = x[rows, w["tree_feature"][node]]
            go_left = np.where(np.isnan(v), w["tree_nan_left"][node] == 1, v <= w["tree_threshold"][node])
            node = np.where(go_left, w["tree_left"][node], w["tree_right"][node])
        leaf = w["tree_value"][node]  # (n, n_trees)
        for j in range(n_models):
            out[:, j] += leaf[:, w["tree_model"] == j].sum(axis=1)
        return out

    def component_quality(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each component's (n_prompts, n_models) predicted quality."""
        if self.w is None or self.knn.embeddings is None:
            raise RuntimeError("ensemble router: predict_quality before fit/load")
        prompts = list(prompts)
        w = self.w
        emb = self.embed(prompts).astype(np.float64)
        feats = feature_matrix(prompts)
        lin_x = (_linear_inputs(emb, feats) - w["lin_mean"]) / w["lin_scale"]
        tree_x = np.hstack([feats, (emb - w["pca_mean"]) @ w["pca_components"].T])
        return {
            "knn": self.knn.predict_quality(prompts).to_numpy(np.float64),
            "linear": _sigmoid(lin_x @ w["lin_coef"].T + w["lin_intercept"]),
            "gbt": _sigmoid(self._tree_logits(tree_x)),
        }

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        if self.w is None:
            raise RuntimeError("ensemble router: predict_quality before fit/load")
        prompts = list(prompts)
        if not prompts:
            return self._frame(np.zeros((0, len(self.models))))
        parts = self.component_quality(prompts)
        return self._frame(np.mean([parts[c] for c in COMPONENTS], axis=0))

    # ---- persistence ------------------------------------------------------------

    def save(self, write_file) -> None:
        from safetensors.numpy import save

        if self.w is None:
            raise RuntimeError("ensemble router: save before fit")
        tensors = {k: np.ascontiguousarray(v) for k, v in self.w.items()}
        tensors["knn_embeddings"] = np.ascontiguousarray(self.knn.embeddings)
        tensors["knn_quality"] = np.ascontiguousarray(self.knn.quality)
        write_file(WEIGHTS_FILE, save(tensors))

    @classmethod
    def load(cls, read_file, meta: dict) -> "EnsembleRouter":
        from safetensors.numpy import load

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        tensors = load(read_file(WEIGHTS_FILE))
        router.knn.use_weights(tensors.pop("knn_embeddings"), tensors.pop("knn_quality"))
        n_models = len(router.models)
        if tensors["lin_coef"].shape[0] != n_models:
            raise ValueError(f"ensemble weights do not match {n_models} models")
        router.w = tensors
        return router
