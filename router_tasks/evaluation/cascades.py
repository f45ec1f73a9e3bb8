"""Cascades on recorded replies: ask cheap models first, escalate when a check fails.

Every cascade here is evaluated on replies the models really gave (the ZeroEval
records): a prompt's outcome is the recorded correctness of the model whose answer is
returned, and its cost the sum of the recorded costs of every call made (input and
output tokens of each reply at list prices). No reply is simulated.

Checks (families of candidates; each candidate is one cascade setting):

- ``agreement``: call cheap models `a` and `b`; if their final answers agree (after the
  task's normalisation) return it, else call `f` and return its answer. With three
  cheap models (``agreement3``): `a` and `b`; on disagreement `c`, whose answer is
  returned if it agrees with `a` or `b`; else `f`.
- ``verifier``: call `a`; a trained scorer over its reply (answer present, JSON parsed,
  reply and reasoning length, prompt length, answer shape) gives P(correct); accept at
  >= t, else call `f`. ``verifier2`` scores `a`'s reply together with a second cheap
  model's (both replies' features and whether the answers agree), for (a, b) -> f.
- ``confidence``: call `a` only when the router predicts its quality >= t, else call `f`
  directly (one call either way).

Which cascade to run at a budget is a setting, so it is chosen on training prompts only:
`nested_curve` picks, per outer fold and budget, the candidate with the best accuracy
within the budget on the other folds (with verifier and router scores that themselves
come from inner cross-fitting, never from a model that saw the prompt), and reports what
that choice does on the held-out fold.

The live counterpart, for a gateway, is `router_tasks.routing.cascade` (same checks,
calling real endpoints).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: thresholds tried for verifier / confidence checks (probabilities)
THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


@dataclass
class Candidate:
    """One cascade setting's per-prompt outcome over all prompts of a task."""

    family: str
    name: str
    correct: np.ndarray  # (n,) bool: the returned answer is right
    cost: np.ndarray  # (n,) dollars of every call made
    branch: np.ndarray  # (n,) int8: which way each prompt went (index into `branches`)
    branches: list  # [(models called "a+b+f", model whose answer is returned), ...]
    meta: dict = field(default_factory=dict)

    def called(self, rows=slice(None)) -> np.ndarray:
        return np.asarray([b[0] for b in self.branches], dtype=object)[self.branch[rows]]

    def answered(self, rows=slice(None)) -> np.ndarray:
        return np.asarray([b[1] for b in self.branches], dtype=object)[self.branch[rows]]


def _agree(ans: np.ndarray, a: int, b: int) -> np.ndarray:
    x, y = ans[:, a], ans[:, b]
    return np.array([u is not None and v is not None and u == v for u, v in zip(x, y, strict=False)], dtype=bool)


def agreement_candidates(
    models: Sequence[str],
    answers: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    cheap: Sequence[int],
    finals: Sequence[int],
) -> list[Candidate]:
    """Two-model (and three-model) answer-agreement cascades: cheap pairs x final models."""
    out = []
    for a, b in itertools.combinations(cheap, 2):
        agree = _agree(answers, a, b)
        for f in finals:
            if f in (a, b):
                continue
            ok = np.where(agree, correct[:, a], correct[:, f])
            c = cost[:, a] + cost[:, b] + np.where(agree, 0.0, cost[:, f])
            branch = np.where(agree, 0, 1).astype(np.int8)
            branches = [(f"{models[a]}+{models[b]}", models[a]), (f"{models[a]}+{models[b]}+{models[f]}", models[f])]
            out.append(
                Candidate(
                    "agreement",
                    f"agree({models[a]},{models[b]})->{models[f]}",
                    ok,
                    c,
                    branch,
                    branches,
                    {"cheap": [models[a], models[b]], "final": models[f]},
                )
            )
    for a, b, c3 in itertools.combinations(cheap, 3):
        ab, ac, bc = _agree(answers, a, b), _agree(answers, a, c3), _agree(answers, b, c3)
        every = ab & ac
        for f in finals:
            if f in (a, b, c3):
                continue
            # all three agree, else the final model
            names = (models[a], models[b], models[c3], models[f])
            ok = np.where(every, correct[:, a], correct[:, f])
            c = cost[:, a] + cost[:, b] + cost[:, c3] + np.where(every, 0.0, cost[:, f])
            out.append(
                Candidate(
                    "agreement",
                    f"agree_all({names[0]},{names[1]},{names[2]})->{names[3]}",
                    ok,
                    c,
                    np.where(every, 0, 1).astype(np.int8),
                    [("+".join(names[:3]), names[0]), ("+".join(names), names[3])],
                    {"cheap": list(names[:3]), "final": names[3]},
                )
            )
            third = ~ab & (ac | bc)
            final = ~ab & ~(ac | bc)
            ok = np.where(ab, correct[:, a], np.where(third, correct[:, c3], correct[:, f]))
            c = cost[:, a] + cost[:, b] + np.where(ab, 0.0, cost[:, c3]) + np.where(final, cost[:, f], 0.0)
            names = (models[a], models[b], models[c3], models[f])
            branch = np.where(ab, 0, np.where(third, 1, 2)).astype(np.int8)
            branches = [("+".join(names[:2]), names[0]), ("+".join(names[:3]), names[2]), ("+".join(names), names[3])]
            out.append(
                Candidate(
                    "agreement",
                    f"agree3({names[0]},{names[1]},{names[2]})->{names[3]}",
                    ok,
                    c,
                    branch,
                    branches,
                    {"cheap": list(names[:3]), "final": names[3]},
                )
            )
    return out


def threshold_candidates(
    family: str,
    models: Sequence[str],
    score: np.ndarray,
    first: Sequence[int],
    final: int,
    correct: np.ndarray,
    cost: np.ndarray,
    *,
    first_always: bool,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[Candidate]:
    """Accept the first model(s)' answer (that of `first[0]`) where `score` >= t, else `final`.

    `first_always`: the first models are called on every prompt (a verifier reads their
    replies); otherwise (router confidence) they are called only where accepted.
    """
    out = []
    a = first[0]
    head = "+".join(models[i] for i in first)
    first_cost = cost[:, list(first)].sum(axis=1)
    for t in thresholds:
        accept = score >= t
        ok = np.where(accept, correct[:, a], correct[:, final])
        if first_always:
            c = first_cost + np.where(accept, 0.0, cost[:, final])
            branches = [(head, models[a]), (f"{head}+{models[final]}", models[final])]
        else:
            c = np.where(accept, first_cost, cost[:, final])
            branches = [(head, models[a]), (models[final], models[final])]
        branch = np.where(accept, 0, 1).astype(np.int8)
        out.append(
            Candidate(
                family,
                f"{family}({head}>={t})->{models[final]}",
                ok,
                c,
                branch,
                branches,
                {"first": [models[i] for i in first], "final": models[final], "threshold": float(t)},
            )
        )
    return out


def agreement_router_candidates(
    models: Sequence[str],
    answers: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    cheap: Sequence[int],
    finals: Sequence[int],
    quality: np.ndarray,
    cost_pred: np.ndarray,
    lams: Sequence[float],
) -> list[Candidate]:
    """Cheap pairs checked by agreement; on disagreement the router picks the final model
    among `finals` by argmax (predicted quality - lambda * predicted cost)."""
    out = []
    finals = [f for f in finals]
    for a, b in itertools.combinations(cheap, 2):
        agree = _agree(answers, a, b)
        fin = [f for f in finals if f not in (a, b)]
        if not fin:
            continue
        for lam in lams:
            pick = np.asarray(fin)[np.argmax(quality[:, fin] - float(lam) * cost_pred[:, fin], axis=1)]
            rows = np.arange(len(pick))
            ok = np.where(agree, correct[:, a], correct[rows, pick])
            c = cost[:, a] + cost[:, b] + np.where(agree, 0.0, cost[rows, pick])
            branch = np.where(agree, 0, 1 + np.searchsorted(fin, pick)).astype(np.int8)
            branches = [(f"{models[a]}+{models[b]}", models[a])] + [
                (f"{models[a]}+{models[b]}+{models[f]}", models[f]) for f in fin
            ]
            out.append(
                Candidate(
                    "agreement+router",
                    f"agree({models[a]},{models[b]})->router(lambda={lam:g})",
                    ok,
                    c,
                    branch,
                    branches,
                    {"cheap": [models[a], models[b]], "finals": [models[f] for f in fin], "lambda": float(lam)},
                )
            )
    return out


# --------------------------------------------------------------------------------------
# the verifier: a trained scorer over recorded replies
# --------------------------------------------------------------------------------------
def reply_features(task: str, frame: Callable[[str], pd.DataFrame], model: str, input_tokens: np.ndarray) -> np.ndarray:
    """Features of `model`'s replies (one row per prompt) for the verifier.

    `frame(column)` gives the (prompts x models) table of a recorded column."""
    ans = frame("answer")[model].to_numpy(object)
    has = frame("has_answer")[model].to_numpy(float)
    parsed = frame("parsed_json")[model].to_numpy(float)
    out_tok = np.log1p(frame("output_tokens")[model].to_numpy(float))
    reason = np.log1p(frame("reasoning_chars")[model].to_numpy(float))
    text = [str(a) if a is not None else "" for a in ans]
    length = np.log1p([len(t) for t in text])
    if task == "gsm":
        shape = np.array([1.0 if t.strip().lstrip("-").replace(",", "").isdigit() else 0.0 for t in text])
        extra = np.array([1.0 if any(ch.isalpha() for ch in t) else 0.0 for t in text])
    else:
        shape = np.array([1.0 if t[:1] in "[({'\"" else 0.0 for t in text])
        extra = np.array([1.0 if t in ("", "None", "True", "False") else 0.0 for t in text])
    return np.column_stack(
        [has, parsed, out_tok, reason, length, shape, extra, np.log1p(input_tokens), out_tok - np.log1p(input_tokens)]
    )


def fit_predict_verifier(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """P(correct) for `test` rows from a logistic regression fitted on `train` rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    yt = y[train].astype(int)
    if yt.min() == yt.max():  # one class only: its rate
        return np.full(int(test.sum()) if test.dtype == bool else len(test), float(yt[0]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    clf.fit(x[train], yt)
    return clf.predict_proba(x[test])[:, 1]


def nested_scores(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict[int, np.ndarray]:
    """Per outer fold k, a full-length score vector: held-out fold k scored by a model
    fitted on the other folds, and every other fold j scored by a model fitted on the
    folds other than j and k (inner cross-fitting: no score ever saw fold k's labels or
    its own prompt's)."""
    out = {}
    ks = np.unique(folds)
    for k in ks:
        s = np.empty(len(y))
        test = folds == k
        s[test] = fit_predict_verifier(x, y, ~test, test)
        for j in ks:
            if j == k:
                continue
            inner = folds == j
            s[inner] = fit_predict_verifier(x, y, ~test & ~inner, inner)
        out[int(k)] = s
    return out


# --------------------------------------------------------------------------------------
# nested selection: which cascade at which budget, chosen on training folds only
# --------------------------------------------------------------------------------------
def nested_curve(
    candidates_for_fold: Callable[[int], list[Candidate]], folds: np.ndarray, budgets_per_prompt: Sequence[float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve, decisions): for each budget, stitch the held-out folds' outcomes of the
    candidate that had the best accuracy within that budget on the training folds.

    `candidates_for_fold(k)` gives the candidates whose per-prompt scores are the nested
    ones for outer fold k (train folds: inner cross-fit; fold k: fitted on the rest).
    Where no candidate fits a budget on the training folds, the cheapest one is used.
    """
    n = len(folds)
    ks = np.unique(folds)
    correct = {i: np.zeros(n, dtype=bool) for i in range(len(budgets_per_prompt))}
    cost = {i: np.zeros(n) for i in range(len(budgets_per_prompt))}
    chosen: dict[int, list[str]] = {i: [] for i in range(len(budgets_per_prompt))}
    decisions = []
    for k in ks:  # one fold's candidates at a time: they are many
        test = folds == k
        train = ~test
        cands = candidates_for_fold(int(k))
        if not cands:
            raise ValueError("no cascade candidates")
        tr_cost = np.array([c.cost[train].mean() for c in cands])
        tr_acc = np.array([c.correct[train].mean() for c in cands])
        for i, b in enumerate(budgets_per_prompt):
            ok = np.flatnonzero(tr_cost <= b)
            best = ok[np.lexsort((tr_cost[ok], -tr_acc[ok]))[0]] if len(ok) else int(np.argmin(tr_cost))
            cand = cands[best]
            correct[i][test], cost[i][test] = cand.correct[test], cand.cost[test]
            chosen[i].append(cand.name)
            decisions.append(
                pd.DataFrame(
                    {
                        "prompt_index": np.flatnonzero(test),
                        "fold": int(k),
                        "budget_per_1k": 1000 * b,
                        "setting": cand.name,
                        "models_called": cand.called(test),
                        "answered_by": cand.answered(test),
                        "correct": cand.correct[test],
                        "cost": cand.cost[test],
                    }
                )
            )
    rows = [
        {
            "budget_per_1k": 1000 * b,
            "cost_per_1k": 1000 * cost[i].mean(),
            "accuracy": correct[i].mean(),
            "settings": " | ".join(sorted(set(chosen[i]))),
        }
        for i, b in enumerate(budgets_per_prompt)
    ]
    return pd.DataFrame(rows), pd.concat(decisions, ignore_index=True)
