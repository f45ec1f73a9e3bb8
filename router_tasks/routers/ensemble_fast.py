"""The ensemble's scoring folded into a few float arrays, for one prompt at a time.

The ensemble's logistic parts standardise their inputs and read concatenations of the
prompt vector and the text features (`text_features.linear_inputs`, `form_inputs`,
`style_inputs`). Scoring a prompt that way builds each concatenation, standardises it
and multiplies, through pandas at the end: cheap per prompt in a batch, most of the time
when a gateway scores one prompt per call. `CompiledBlend` folds the standardisation into
the weights once (x @ (coef / scale).T + (intercept - coef @ (mean / scale))) and splits
each weight matrix by the blocks of its input, so a prompt costs a few small matrix
products and no copies. The outputs equal the reference path's
(`EnsembleRouter.reference_quality`) within float rounding: a test checks it.

Parts without a compiled form (the trees, the TF-IDF part) are left to the reference
path: `CompiledBlend.covers` says whether a blend can be scored here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: the ensemble's components this module scores (the others take the reference path)
COMPILED = ("knn", "linear", "style", "form")


def _fold(w: dict, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(weights (n_inputs, n_models), bias (n_models,)) with the standardisation folded in."""
    coef = w[f"{prefix}_coef"] / w[f"{prefix}_scale"]
    bias = w[f"{prefix}_intercept"] - coef @ w[f"{prefix}_mean"]
    return np.ascontiguousarray(coef.T, dtype=np.float64), np.asarray(bias, np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class CompiledBlend:
    """Scores the ensemble's compiled components and blends them per prompt form.

    `w` is the ensemble's weights dict; `n_feats` the text features' count; `dim` the
    representation's and `form_dim` the form part's vector size.
    """

    def __init__(self, w: dict, components: tuple[str, ...], n_feats: int, dim: int, form_dim: int):
        self.components = components
        blends = {}
        for form in ("multiple_choice", "free_form"):
            b = np.asarray(w[f"blend_{form}"], np.float64)
            blends[form] = b / b.sum()
        self.blend_mc, self.blend_ff = blends["multiple_choice"], blends["free_form"]
        self.used_mc = [c for c, b in zip(components, self.blend_mc, strict=False) if b > 0]
        self.used_ff = [c for c, b in zip(components, self.blend_ff, strict=False) if b > 0]
        f = n_feats
        self.linear = self.form = self.style = None
        if "lin_coef" in w:
            a, bias = _fold(w, "lin")  # inputs: [emb, feats, feats x choices]
            self.linear = (a[:dim], a[dim : dim + f], a[dim + f :], bias)
        if "frm_coef" in w:
            a, bias = _fold(w, "frm")  # inputs: [emb, emb x choices, feats, feats x choices]
            d = form_dim
            self.form = (a[:d], a[d : 2 * d], a[2 * d : 2 * d + f], a[2 * d + f :], bias)
        if "sty_coef" in w:
            a, bias = _fold(w, "sty")  # inputs: [feats, style x choices]
            self.style = (a[:f], a[f:], bias)

    def covers(self, used: list[str]) -> bool:
        have = {
            "knn": True,
            "linear": self.linear is not None,
            "form": self.form is not None,
            "style": self.style is not None,
        }
        return all(have.get(c, False) for c in used)

    def quality(
        self,
        emb: np.ndarray,
        feats: np.ndarray,
        choices: np.ndarray,
        knn: Callable[[np.ndarray], np.ndarray],
        form_emb: Callable[[], np.ndarray],
        style: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """(n, n_models) blended quality; `emb` float32 (n, dim) unit rows, `feats` (n, n_feats)
        float64, `choices` (n,) bool. `knn(emb)`, `form_emb()` and `style()` are called only
        when a prompt's blend gives that part weight."""
        mc = choices.astype(bool)
        c = mc.astype(np.float64)[:, None]
        weights = np.where(mc[:, None], self.blend_mc, self.blend_ff)
        used = set(self.used_mc if mc.all() else self.used_ff if not mc.any() else self.used_mc + self.used_ff)
        out = 0.0
        emb64 = None
        for i, name in enumerate(self.components):
            if name not in used:
                continue
            if name == "knn":
                part = knn(emb)
            elif name == "linear":
                emb64 = emb.astype(np.float64) if emb64 is None else emb64
                a_e, a_f, a_fc, bias = self.linear
                part = _sigmoid(emb64 @ a_e + feats @ a_f + c * (feats @ a_fc) + bias)
            elif name == "form":
                if form_emb is None:
                    emb64 = emb.astype(np.float64) if emb64 is None else emb64
                    v = emb64
                else:
                    v = form_emb()
                a_e, a_ec, a_f, a_fc, bias = self.form
                part = _sigmoid(v @ a_e + c * (v @ a_ec) + feats @ a_f + c * (feats @ a_fc) + bias)
            elif name == "style":
                a_f, a_s, bias = self.style
                part = _sigmoid(feats @ a_f + c * (style() @ a_s) + bias)
            else:  # pragma: no cover - covers() keeps other parts out
                raise ValueError(f"no compiled form for ensemble part {name!r}")
            out = out + weights[:, i : i + 1] * part
        return out
