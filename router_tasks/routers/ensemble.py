"""Ensemble router: a weighted mean of per-model quality predictors, weights chosen in fit.

Six per-model quality predictors over the prompt's vector (its `representation`: MiniLM's
embedding by default, `embeddings.REPRESENTATIONS`) and cheap features of the prompt text
(`text_features`), each trained on every label a model has (by default
`select_components` lets knn, linear, style and form compete):

* ``knn``: the kNN router (`KnnRouter`, its default params), unchanged;
* ``linear``: L2-regularised logistic regression on [standardised embedding, text
  features, text features x "has multiple-choice options"] (the interaction lets the
  length/number-count signal differ between multiple-choice questions and free-form
  problems such as math word problems, where more numbers and sentences mean more steps);
* ``gbt``: histogram gradient-boosted trees on [text features, first `gbt_pca` principal
  components of the embedding];
* ``style``: logistic regression on question-form features that carry across topics
  (`style_features`: "NOT/EXCEPT", "Statement 1 | Statement 2", "which of the
  following", computation verbs, maths notation, option lengths, digits in the options);
* ``lexical``: logistic regression on TF-IDF of word 1-2-grams (hashed, so the weights
  are plain arrays and no vocabulary is stored);
* ``form``: the linear part with separate embedding weights for multiple-choice and
  free-form prompts (`form_inputs`), more strongly regularised (``form_c``). With
  ``form_embedding: "smollm2-layer15"`` it reads SmolLM2-135M's hidden states
  (`embeddings.EMBEDDING_MODELS`) instead of MiniLM's embedding: better on topics the
  labels never covered, at several times MiniLM's cost per prompt (docs/routers.md).

The predicted quality of a model is a weighted mean of the components' predictions. The
weights are chosen inside `fit`, on a validation split carved from the training labels
only (`router_tasks.routers.selection`: whole k-means clusters of prompts held out, so a
blend wins by generalising to topics it did not see), from a grid of weights in steps of
0.25 (the mean exact APGR over `select_repeats` such splits decides); the components
with weight are then refit on all the labels. With `blend_by_form` (default) multiple-choice questions and free-form
prompts each get their own blend, chosen on that form's validation prompts alone (a form
with too few of them keeps the shared one): what ranks multiple-choice questions across
topics, the question-form features, says little about maths word problems or chat. Before
the blend, on the same splits, a
component whose ``<name>_c`` param is a list gets the C whose own validation APGR is
best (the form part by default: how hard to regularise its ~800 dense inputs depends on
how far the held-out topics are from the rest). Under cross-fit that is nested
cross-validation: the weights never see the prompts they are scored on. With too few
validation prompts (`selection.MIN_VALIDATION`) or `select` off, the fallback is the
equal mean of knn, linear and gbt. The strong model is predicted like any other.

Soft labels (judge scores mapped to [0, 1]) are fitted as two weighted rows (label 1 with
weight q, label 0 with weight 1 - q); a model whose labels are all one class gets a
constant prediction (its smoothed base rate) from the linear and tree parts.

Everything is deterministic (lbfgs, fixed tree and k-means seeds, no early stopping);
fitting runs with one BLAS/OpenMP thread (many threads on a busy machine thrash). Weights are one
safetensors file of plain arrays: the trees are stored as flattened node tables and
evaluated in numpy (no pickle; `ensemble_trees`), all trees of a model at once, so
single-prompt calls stay cheap; one prompt is scored through `ensemble_fast.CompiledBlend` (the logistic parts with
their standardisation folded in). scikit-learn is used for fitting only.

Cross-fit and leave-subject-out APGR on the bundled RouteLLM labels: README and
benchmark_scripts/router_quality.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers import selection
from router_tasks.routers.base import label_matrix
from router_tasks.routers.embedding_router import DEFAULT_REPRESENTATION, EmbeddingRouter
from router_tasks.routers.embeddings import Embedder, embedding_model
from router_tasks.routers.ensemble_fast import CompiledBlend
from router_tasks.routers.ensemble_trees import constant_tree, fit_trees, pack_trees, tree_logits
from router_tasks.routers.knn import KnnRouter
from router_tasks.routers.text_features import (
    CHOICES_COL,
    FEATURE_NAMES,
    feature_matrix,
    form_inputs,
    hashed_counts,
    linear_inputs,
    style_inputs,
    style_matrix,
    tfidf,
)

WEIGHTS_FILE = "ensemble.safetensors"
SELECTION_FILE = "ensemble_selection.json"
COMPONENTS = ("knn", "linear", "gbt", "style", "lexical", "form")
#: blend when nothing is selected (and for weights saved before selection existed)
FALLBACK_BLEND = (1 / 3, 1 / 3, 1 / 3, 0.0, 0.0, 0.0)
#: components whose inverse regularisation strength (param ``<name>_c``) may be a list:
#: fit then chooses it on the same validation splits as the blend
TUNED_C = ("linear", "style", "lexical", "form")
#: prompt forms that may get their own blend (`blend_by_form`): has multiple-choice options or not
FORMS = {"multiple_choice": True, "free_form": False}


def _c_values(value) -> list[float]:
    """A regularisation setting: one value, or the candidates fit chooses among."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


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
    # Chosen from data inside fit, on validation splits of the training labels only (see
    # the module docstring): the blends, and the form part's C from the listed candidates.
    # Fixed, conventional values: C=0.01 for the ~400 standardised linear inputs (choosing
    # it from [0.002, 0.01] as well measured no better: README), C=0.1 for the few style
    # inputs, C=1 for unit-norm TF-IDF rows, the kNN settings, and few large leaves,
    # shrinkage 0.05 and 200 rounds for the trees.
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
        "style_c": 0.1,
        # twice the inputs of the linear part, half of them zero on any one prompt form
        "form_c": [0.002, 0.01],
        # the prompt vectors every part reads: a name in embeddings.REPRESENTATIONS
        "representation": DEFAULT_REPRESENTATION,
        # the vectors the form part reads, if not the representation's: a name in
        # embeddings.EMBEDDING_MODELS
        "form_embedding": None,
        "lexical_features": 2**17,
        "lexical_c": 1.0,
        "select": True,
        "blend_by_form": True,
        "select_share": 0.25,
        "select_clusters": 20,
        "select_repeats": 2,
        # the trees and the TF-IDF part are left out of the choice by default: they are the
        # slow ones to fit (several minutes per fit on two busy cores with the TF-IDF part),
        # and neither earned weight in small trial runs; listing them puts them back
        "select_components": ["knn", "linear", "style", "form"],
        "seed": 0,
    }

    @classmethod
    def identity(cls, params: dict) -> dict:

        ident = super().identity(params)
        form = params.get("form_embedding")
        if form and form != (params.get("representation") or DEFAULT_REPRESENTATION):
            ident["form_embedding_model"] = embedding_model(form).model_id
        return ident

    def __init__(self, models, strong_model, weak_model, params=None, embedder=None):

        super().__init__(models, strong_model, weak_model, params, embedder)
        p = self.params
        try:
            if p["form_embedding"] is not None:
                embedding_model(p["form_embedding"])
        except ValueError as err:
            raise ValueError(f"ensemble router: form_embedding: {err}") from None
        for c in TUNED_C:
            values = _c_values(p[f"{c}_c"])
            if not values or min(values) <= 0:
                raise ValueError(f"ensemble router: {c}_c must be a number > 0 or a list of them, got {p[f'{c}_c']!r}")
        unknown = set(p["select_components"]) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"ensemble router: unknown select_components {sorted(unknown)}; known: {list(COMPONENTS)}")
        if int(p["gbt_pca"]) < 0 or int(p["gbt_rounds"]) < 0:
            raise ValueError("ensemble router: gbt_pca and gbt_rounds must be >= 0")
        self.knn = KnnRouter(models, strong_model, weak_model, self._knn_params(), embedder=embedder)
        self.w: dict[str, np.ndarray] | None = None  # component weights and the blend, see fit()
        self.selection: dict = {}  # what fit chose, on which validation split

    def _knn_params(self) -> dict:
        return {
            "k": self.params["knn_k"],
            "temperature": self.params["knn_temperature"],
            "prior_weight": self.params["knn_prior_weight"],
            "representation": self.representation,
        }

    @EmbeddingRouter.embedder.setter
    def embedder(self, value) -> None:
        EmbeddingRouter.embedder.fset(self, value)
        if getattr(self, "knn", None) is not None:
            self.knn.embedder = self._embedder

    def _form_vectors(self, prompts: list[str], emb: np.ndarray) -> np.ndarray:
        """What the form part reads: `emb` (the representation's vectors) or the
        `form_embedding` model's, through the same caches as the router's embedder."""

        name = self.params["form_embedding"] or self.representation
        if name == self.representation:
            return emb
        embedder = self.embedder.with_model(name) if isinstance(self.embedder, Embedder) else Embedder(model=name)
        return np.asarray(embedder(prompts), dtype=np.float64)

    # ---- training ---------------------------------------------------------------

    def fit(self, labels: pd.DataFrame) -> EnsembleRouter:
        from threadpoolctl import threadpool_limits

        prompts, quality = label_matrix(labels, self.models)
        if not len(prompts):
            raise ValueError("ensemble router: no labelled prompts to train on")
        texts = prompts["prompt"].tolist()
        self.fit_representation(texts)
        self.knn.embedder = self.embedder
        emb = self.embed(texts)
        cache = {"feats": feature_matrix(texts), "style": style_matrix(texts)}  # computed once per fit
        if "form" in self.params["select_components"]:
            cache["form_emb"] = self._form_vectors(texts, emb)
        can_select = (
            bool(self.params["select"])
            and {self.strong_model, self.weak_model} <= set(self.models)
            and self.strong_model != self.weak_model
        )
        si, wi = (self.models.index(self.strong_model), self.models.index(self.weak_model)) if can_select else (0, 0)
        blend = np.asarray(FALLBACK_BLEND)
        self.selection = {"selected": False}
        with threadpool_limits(1):
            candidates = [c for c in COMPONENTS if c in self.params["select_components"]]
            grids = {c: _c_values(self.params[f"{c}_c"]) for c in TUNED_C}
            chosen_c = {c: grids[c][0] for c in TUNED_C}
            # per split and component: {C value: that component's predicted strong-weak gap}
            splits, tuned = [], []
            for r in range(int(self.params["select_repeats"]) if can_select else 0):
                # several cluster splits: one 25% split of a few topics is a noisy judge
                val = selection.cluster_split(
                    emb,
                    float(self.params["select_share"]),
                    int(self.params["select_clusters"]),
                    int(self.params["seed"]) + r,
                )
                both = val & ~np.isnan(quality[:, si]) & ~np.isnan(quality[:, wi])
                if (~val).sum() < selection.MIN_VALIDATION or not selection.can_judge(
                    quality[both, si], quality[both, wi]
                ):
                    continue
                tr, vi = np.flatnonzero(~val), np.flatnonzero(both)
                tr_texts, vi_texts = [texts[i] for i in tr], [texts[i] for i in vi]
                tr_cache, vi_cache = {k: v[tr] for k, v in cache.items()}, {k: v[vi] for k, v in cache.items()}
                # every candidate at its first C, then each further C of a tuned one alone
                fits = [(candidates, {c: grids[c][0] for c in candidates if c in grids})]
                fits += [([c], {c: v}) for c in candidates if c in grids for v in grids[c][1:]]
                gaps = {c: {} for c in candidates}
                for needed, values in fits:
                    knn, w = self._fit_parts(
                        tr_texts, emb[tr], quality[tr], needed=needed, cache=tr_cache, c_values=values
                    )
                    parts = self._parts(knn, w, vi_texts, emb[vi].astype(np.float64), needed, cache=vi_cache)
                    for c in needed:
                        gaps[c][values.get(c)] = parts[c][:, si] - parts[c][:, wi]
                tuned.append((gaps, quality[vi, si], quality[vi, wi], cache["feats"][vi, CHOICES_COL] > 0.5))
            for c in candidates:  # each tuned component's C first, by its own validation APGR
                if c in grids and len(grids[c]) > 1 and tuned:
                    by_value = [
                        np.mean([selection.exact_apgr(g[c][v], s_q, w_q) for g, s_q, w_q, _ in tuned]) for v in grids[c]
                    ]
                    chosen_c[c] = grids[c][int(np.argmax(by_value))]  # ties: the list's first
            for g, s_q, w_q, mc in tuned:
                splits.append(([g[c][chosen_c[c] if c in grids else None] for c in candidates], s_q, w_q, mc))
            by_form = {}
            if splits and candidates:
                blend, score = self._choose_blend([sp[:3] for sp in splits], candidates)
                self.selection = {
                    "selected": True,
                    "splits": len(splits),
                    "n_validation": [int(len(sp[1])) for sp in splits],
                    "validation_apgr": round(score, 4),
                    "component_apgr": {
                        c: round(
                            float(np.mean([selection.exact_apgr(gaps[i], s_q, w_q) for gaps, s_q, w_q, _ in splits])), 4
                        )
                        for i, c in enumerate(candidates)
                    },
                }
                if self.params["blend_by_form"]:
                    for form, want in FORMS.items():
                        sub = [
                            ([x[mc == want] for x in gaps], s_q[mc == want], w_q[mc == want])
                            for gaps, s_q, w_q, mc in splits
                        ]
                        sub = [sp for sp in sub if selection.can_judge(sp[1], sp[2])]
                        if sub:  # else this form keeps the shared blend
                            b, sc = self._choose_blend(sub, candidates)
                            by_form[form] = b
                            self.selection.setdefault("by_form", {})[form] = {
                                "blend": {c: float(v) for c, v in zip(COMPONENTS, b, strict=False)},
                                "splits": len(sub),
                                "n_validation": [int(len(sp[1])) for sp in sub],
                                "validation_apgr": round(sc, 4),
                            }
            self.selection["blend"] = {c: float(b) for c, b in zip(COMPONENTS, blend, strict=False)}
            self.selection["c"] = chosen_c
            blends = [blend, *by_form.values()]
            knn, w = self._fit_parts(
                texts,
                emb,
                quality,
                needed=[c for i, c in enumerate(COMPONENTS) if any(b[i] > 0 for b in blends)],
                cache=cache,
                c_values=chosen_c,
            )
        for form in FORMS:
            w[f"blend_{form}"] = by_form.get(form, blend)
        self.knn = knn
        w["blend"] = blend
        self.w = w
        return self

    @staticmethod
    def _choose_blend(splits: list, candidates: list[str]) -> tuple[np.ndarray, float]:
        """(blend over COMPONENTS, its mean validation APGR): the grid point whose blend of
        the candidates' predicted gaps ranks the validation prompts best, over `splits` of
        (gaps per candidate, strong quality, weak quality)."""

        grid = selection.simplex_grid(len(candidates))
        score = np.mean(
            [[selection.exact_apgr(g @ np.vstack(gaps), s_q, w_q) for g in grid] for gaps, s_q, w_q in splits], axis=0
        )
        best = int(np.argmax(score))  # ties: the grid's first
        blend = np.zeros(len(COMPONENTS))
        for c, b in zip(candidates, grid[best], strict=False):
            blend[COMPONENTS.index(c)] = b
        return blend, float(score[best])

    def _fit_parts(
        self,
        texts: list[str],
        emb: np.ndarray,
        quality: np.ndarray,
        needed: Sequence[str] = COMPONENTS,
        cache: dict | None = None,
        c_values: dict | None = None,
    ) -> tuple[KnnRouter, dict]:
        """Fit the components in `needed` (the kNN part always: it is cheap) on one set of
        prompts; returns (knn router, arrays of the others). `c_values` gives a component's
        C (default: the first of its ``<name>_c`` param)."""
        c_of = {c: _c_values(self.params[f"{c}_c"])[0] for c in TUNED_C} | dict(c_values or {})
        from sklearn.decomposition import PCA

        knn = KnnRouter(self.models, self.strong_model, self.weak_model, self._knn_params(), embedder=self.embedder)
        knn.use_weights(emb.astype(np.float32), quality.astype(np.float32))
        cache = cache or {}
        feats = cache["feats"] if "feats" in cache else feature_matrix(texts)
        n_models = len(self.models)
        w: dict[str, np.ndarray] = {}
        targets = []
        for j in range(n_models):
            has = np.flatnonzero(~np.isnan(quality[:, j]))
            y = quality[has, j]
            rows, target, weight = _binary_rows(y)
            base = _logit(float((y.sum() + 1.0) / (len(y) + 2.0))) if len(y) else 0.0
            targets.append((has, rows, target, weight, base, len(np.unique(target)) >= 2))

        def linear_part(prefix: str, x: np.ndarray, c: float) -> None:
            mean = x.mean(axis=0)
            scale = x.std(axis=0)
            scale = np.where(scale > 1e-12, scale, 1.0)
            x = (x - mean) / scale
            coef, intercept = np.zeros((n_models, x.shape[1])), np.zeros(n_models)
            for j, (has, rows, target, weight, base, ok) in enumerate(targets):
                if ok:
                    coef[j], intercept[j] = self._fit_linear(x[has][rows], target, weight, c)
                else:  # nothing to separate: the smoothed base rate
                    intercept[j] = base
            w.update(
                {
                    f"{prefix}_mean": mean,
                    f"{prefix}_scale": scale,
                    f"{prefix}_coef": coef,
                    f"{prefix}_intercept": intercept,
                }
            )

        if "linear" in needed:
            linear_part("lin", linear_inputs(emb, feats), c_of["linear"])
        if "form" in needed:
            form_emb = cache["form_emb"] if "form_emb" in cache else self._form_vectors(texts, emb)
            linear_part("frm", form_inputs(form_emb, feats), c_of["form"])
        if "style" in needed:
            linear_part("sty", style_inputs(texts, feats, cache.get("style")), c_of["style"])
        if "gbt" in needed:
            n_pc = min(int(self.params["gbt_pca"]), len(texts), emb.shape[1])
            if n_pc > 0:
                pca = PCA(n_pc, random_state=int(self.params["seed"])).fit(emb)
                pca_mean, pca_comp = pca.mean_.astype(np.float64), pca.components_.astype(np.float64)
            else:
                pca_mean, pca_comp = np.zeros(emb.shape[1]), np.zeros((0, emb.shape[1]))
            tree_x = np.hstack([feats, (emb - pca_mean) @ pca_comp.T])
            trees = [
                fit_trees(tree_x[has][rows], target, weight, self.params) if ok else constant_tree(base)
                for has, rows, target, weight, base, ok in targets
            ]
            w.update({"pca_mean": pca_mean, "pca_components": pca_comp, **pack_trees(trees)})
        if "lexical" in needed:
            counts = hashed_counts(texts, int(self.params["lexical_features"]))
            df = np.bincount(counts.indices, minlength=counts.shape[1])
            idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0  # scikit-learn's smoothed idf
            x = tfidf(counts, idf)
            coef, intercept = np.zeros((n_models, x.shape[1]), np.float32), np.zeros(n_models)
            for j, (has, rows, target, weight, base, ok) in enumerate(targets):
                if ok:
                    cj, intercept[j] = self._fit_linear(x[has][rows], target, weight, c_of["lexical"])
                    coef[j] = cj
                else:
                    intercept[j] = base
            w.update({"lex_idf": idf, "lex_coef": coef, "lex_intercept": intercept})
        return knn, w

    @staticmethod
    def _fit_linear(x, y, w, c: float) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=c, max_iter=2000).fit(x, y, sample_weight=w)
        return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])

    # ---- scoring ----------------------------------------------------------------

    def _tree_logits(self, x: np.ndarray) -> np.ndarray:
        return tree_logits(self.w, x, len(self.models))

    def _parts(
        self,
        knn: KnnRouter,
        w: dict,
        prompts: list[str],
        emb: np.ndarray,
        which: Sequence[str],
        cache: dict | None = None,
    ) -> dict[str, np.ndarray]:
        """Each component in `which` (and fitted)'s (n_prompts, n_models) predicted quality."""
        out: dict[str, np.ndarray] = {}
        cache = cache or {}
        feats = cache["feats"] if "feats" in cache else feature_matrix(prompts)

        def lin(prefix, x):
            return _sigmoid(
                ((x - w[f"{prefix}_mean"]) / w[f"{prefix}_scale"]) @ w[f"{prefix}_coef"].T + w[f"{prefix}_intercept"]
            )

        if "knn" in which:
            out["knn"] = knn.predict_embedded(emb.astype(np.float32)).astype(np.float64)
        if "linear" in which and "lin_coef" in w:
            out["linear"] = lin("lin", linear_inputs(emb, feats))
        if "form" in which and "frm_coef" in w:
            form_emb = cache["form_emb"] if "form_emb" in cache else self._form_vectors(prompts, emb)
            out["form"] = lin("frm", form_inputs(form_emb, feats))
        if "gbt" in which and "tree_root" in w:
            tree_x = np.hstack([feats, (emb - w["pca_mean"]) @ w["pca_components"].T])
            out["gbt"] = _sigmoid(tree_logits(w, tree_x, len(self.models)))
        if "style" in which and "sty_coef" in w:
            out["style"] = lin("sty", style_inputs(prompts, feats, cache.get("style")))
        if "lexical" in which and "lex_coef" in w:
            x = tfidf(hashed_counts(prompts, len(w["lex_idf"])), w["lex_idf"])
            out["lexical"] = _sigmoid(np.asarray(x @ w["lex_coef"].T.astype(np.float64)) + w["lex_intercept"])
        return out

    def component_quality(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each fitted component's (n_prompts, n_models) predicted quality (those with
        blend weight 0 are not refit on all labels, so they are absent)."""
        if self.w is None or self.knn.embeddings is None:
            raise RuntimeError("ensemble router: predict_quality before fit/load")
        prompts = list(prompts)
        return self._parts(self.knn, self.w, prompts, self.embed(prompts).astype(np.float64), COMPONENTS)

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        return self._frame(self.predict_quality_array(prompts))

    def predict_quality_array(self, prompts: Sequence[str]) -> np.ndarray:
        """`predict_quality` as a float64 (n_prompts, n_models) array: the compiled blend
        (`ensemble_fast`), or the reference path for parts it does not cover."""
        if self.w is None:
            raise RuntimeError("ensemble router: predict_quality before fit/load")
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, len(self.models)))
        feats = feature_matrix(prompts)
        mc = feats[:, CHOICES_COL] > 0.5
        compiled = self._compiled()
        used = (
            compiled.used_mc
            if mc.all()
            else compiled.used_ff
            if not mc.any()
            else list(dict.fromkeys(compiled.used_mc + compiled.used_ff))
        )
        if not compiled.covers(used):
            return np.clip(self.reference_quality(prompts, feats), 0.0, 1.0)
        form_emb = None
        if (self.params["form_embedding"] or self.representation) != self.representation:

            def form_emb():
                return self._form_vectors(prompts, None)

        q = compiled.quality(
            self.embed(prompts), feats, mc, self.knn.predict_embedded, form_emb, lambda: style_matrix(prompts)
        )
        return np.clip(q, 0.0, 1.0)

    def _compiled(self) -> CompiledBlend:
        """The blend compiled from the current weights (again whenever fit/load replace them)."""
        cached = getattr(self, "_compiled_blend", None)
        if cached is None or cached[0] is not self.w:
            form_dim = self.w["frm_coef"].shape[1] // 2 - len(FEATURE_NAMES) if "frm_coef" in self.w else 0
            blend = CompiledBlend(self.w, COMPONENTS, len(FEATURE_NAMES), self.knn.embeddings.shape[1], form_dim)
            cached = (self.w, blend)
            self._compiled_blend = cached
        return cached[1]

    def reference_quality(self, prompts: Sequence[str], feats: np.ndarray | None = None) -> np.ndarray:
        """The blend computed part by part from the stored weights (`_parts`, the same code
        fit scores its validation splits with), unclipped: what the compiled path must equal."""
        prompts = list(prompts)
        feats = feature_matrix(prompts) if feats is None else feats
        mc = feats[:, CHOICES_COL] > 0.5
        # a blend per prompt form (see fit); rows of the (n_prompts, n_components) weights
        weights = np.where(mc[:, None], self.w["blend_multiple_choice"], self.w["blend_free_form"])
        weights = weights / weights.sum(axis=1, keepdims=True)
        used = [c for i, c in enumerate(COMPONENTS) if weights[:, i].any()]
        parts = self._parts(
            self.knn, self.w, prompts, self.embed(prompts).astype(np.float64), used, cache={"feats": feats}
        )
        return sum(weights[:, [COMPONENTS.index(c)]] * parts[c] for c in used)

    # ---- persistence ------------------------------------------------------------

    def save(self, write_file) -> None:
        from safetensors.numpy import save

        if self.w is None:
            raise RuntimeError("ensemble router: save before fit")
        tensors = {k: np.ascontiguousarray(v) for k, v in self.w.items()}
        tensors["knn_embeddings"] = np.ascontiguousarray(self.knn.embeddings)
        tensors["knn_quality"] = np.ascontiguousarray(self.knn.quality)
        tensors["blend"] = np.asarray(self.w["blend"], np.float64)
        write_file(WEIGHTS_FILE, save(tensors))
        # what fit chose and on what (validation APGR per component): read by people and
        # by benchmark_scripts/router_quality.py, never needed to load the router
        write_file(SELECTION_FILE, json.dumps(self.selection, indent=2, sort_keys=True).encode())

    @classmethod
    def load(cls, read_file, meta: dict) -> EnsembleRouter:
        from safetensors.numpy import load

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        tensors = load(read_file(WEIGHTS_FILE))
        router.knn.use_weights(tensors.pop("knn_embeddings"), tensors.pop("knn_quality"))
        n_models = len(router.models)
        if any(v.shape[0] != n_models for k, v in tensors.items() if k.endswith("_coef")):
            raise ValueError(f"ensemble weights do not match {n_models} models")
        tensors.setdefault("blend", np.asarray(FALLBACK_BLEND))  # saved before selection existed
        blend = tensors["blend"]  # saved before later components existed: they get no weight
        tensors["blend"] = np.concatenate([blend, np.zeros(len(COMPONENTS) - len(blend))])
        for form in FORMS:  # saved before blends by form existed: the one blend for both
            tensors.setdefault(f"blend_{form}", tensors["blend"])
        router.w = tensors
        return router
