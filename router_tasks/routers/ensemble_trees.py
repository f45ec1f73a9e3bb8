"""The ensemble's gradient-boosted trees as plain arrays: fitted with scikit-learn, stored as
flattened node tables (no pickle) and evaluated in numpy, all trees of all models at once."""

from __future__ import annotations

import numpy as np


def fit_trees(x, y, w, p: dict) -> dict:
    """Gradient-boosted trees on (x, y) with weights w, as plain node tables; `p`: the router's params."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    gbt = HistGradientBoostingClassifier(
        max_iter=int(p["gbt_rounds"]),
        learning_rate=float(p["gbt_learning_rate"]),
        max_leaf_nodes=int(p["gbt_max_leaf_nodes"]),
        min_samples_leaf=int(p["gbt_min_samples_leaf"]),
        l2_regularization=float(p["gbt_l2"]),
        early_stopping=False,
        random_state=int(p["seed"]),
    ).fit(x, y, sample_weight=w)
    nodes = [predictors[0].nodes for predictors in gbt._predictors]  # binary: one tree per round
    if any(n["is_categorical"].any() for n in nodes):
        raise RuntimeError("ensemble router: unexpected categorical split")
    return {"base": float(np.ravel(gbt._baseline_prediction)[0]), "nodes": nodes}


def constant_tree(base: float) -> dict:
    return {"base": base, "nodes": []}


def pack_trees(trees: list[dict]) -> dict:
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
        "tree_feature": cat(feature, np.int64),
        "tree_threshold": cat(threshold, np.float64),
        "tree_left": cat(left, np.int64),
        "tree_right": cat(right, np.int64),
        "tree_value": cat(value, np.float64),
        "tree_nan_left": cat(nan_left, np.int8),
        "tree_root": np.asarray(roots, np.int64),
        "tree_model": np.asarray(owner, np.int64),
        "tree_base": np.asarray([t["base"] for t in trees], np.float64),
        "tree_depth": np.asarray([depth], np.int64),
    }


def tree_logits(w: dict, x: np.ndarray, n_models: int) -> np.ndarray:
    """(n prompts, n models) summed tree logits of the packed trees `w` on the rows of `x`."""
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
