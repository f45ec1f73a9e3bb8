"""The run's own labels as the first benchmark: its prompts, its endpoints, its judge.

The prompts scored are ones the router never trained on (`data.labels.own_eval_plan`):
- "holdout": the fixed hash holdout by prompt id that the train stage kept out of
  training (enough labels: one router, scored once);
- "crossfit": k folds by prompt; per fold the router's recipe (kind, params, strong/weak)
  is retrained on the labels minus that fold and scores it (few labels: every prompt is
  scored once, by a router that did not see it).

`evaluate_own_left_out` asks the question a team's next month asks: when the own prompts
come in kinds (the prompt file's `category` column, carried into the labels; else the
ingested dataset, the labels' `benchmark`), each kind with enough prompts is scored by a
router retrained without any prompt of it, so the figure is how the router does on a kind
of traffic it has no labels for (leave-group-out, on the team's own data). It
sits beside the own-labels figure in the report and never enters the publish metric.

Besides APGR/AUC/CPT for the strong/weak pair (`metrics.summarize`, as for the RouteLLM
benchmarks) it reports every model's predicted-vs-observed quality (Brier score and
expected calibration error) and a quality-vs-cost curve over all models with a price:
per prompt the model maximising predicted quality minus lambda x price, swept over lambda,
next to each model alone.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pandas as pd

from router_tasks.core.schemas import OWN_BENCHMARK, is_own_source
from router_tasks.core.stage import ArtifactRef, run_stage
from router_tasks.data.labels import own_eval_plan
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.metrics import LeakageError
from router_tasks.routers import load_router
from router_tasks.training.train import train_router

log = logging.getLogger(__name__)

FOLDS_STAGE = "own_crossfit_labels"
FOLDS_VERSION = "1"
CALIBRATION_BINS = 10
#: prompts labelled for both models a group (category or dataset) needs to be left out and scored
OWN_GROUP_MIN_PROMPTS = 10
#: what the own prompts are grouped by, first that gives two groups: (labels column, protocol)
OWN_GROUPINGS = (("category", "leave-category-out"), ("benchmark", "leave-dataset-out"))
#: how many lambda values the quality-vs-cost sweep tries (log-spaced, plus 0)
COST_SWEEP_POINTS = 24


class OwnLabelsSkipped(Exception):
    """The own-labels benchmark cannot be scored for this router (the reason is the text)."""


def own_quality(labels: pd.DataFrame) -> pd.DataFrame:
    """Observed quality of the own labels: one row per prompt id, one column per model."""
    own = labels[is_own_source(labels["source"]) & labels["quality"].notna()]
    q = own.groupby(["prompt_id", "model"])["quality"].mean().astype(float).unstack("model")
    q.index = q.index.astype(str)
    prompts = own.drop_duplicates("prompt_id").set_index(own.drop_duplicates("prompt_id")["prompt_id"].astype(str))
    q.insert(0, "_prompt", prompts.loc[q.index, "prompt"].astype(str))
    return q


def prices_of(models: list[dict] | None) -> dict[str, float]:
    """{endpoint name: $ per 1M tokens, input + output} for endpoints that state a price."""
    out = {}
    for m in models or []:
        if not isinstance(m, dict) or "name" not in m:
            continue
        price = float(m.get("price_input_per_m") or 0.0) + float(m.get("price_output_per_m") or 0.0)
        if "price_input_per_m" in m or "price_output_per_m" in m:
            out[str(m["name"])] = price
    return out


def pair_prices(prices: dict[str, float], strong: str, weak: str) -> tuple[float, float] | None:
    """(strong, weak) $ per 1M tokens when both models have a price, for the dollars saved."""
    return (prices[strong], prices[weak]) if strong in prices and weak in prices else None


def calibration_table(pred: pd.DataFrame, observed: pd.DataFrame, models) -> pd.DataFrame:
    """Per model: n, mean observed and predicted quality, Brier score, expected calibration error."""
    rows = []
    for m in models:
        if m not in observed.columns or m not in pred.columns:
            continue
        both = pd.DataFrame({"p": pred[m].astype(float), "y": observed[m]}).dropna()
        if both.empty:
            continue
        p, y = both["p"].to_numpy(), both["y"].to_numpy(float)
        bins = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * (bins == b).sum() for b in np.unique(bins)) / len(p)
        rows.append(
            {
                "model": m,
                "n_prompts": int(len(p)),
                "mean_observed": float(y.mean()),
                "mean_predicted": float(p.mean()),
                "brier": float(((p - y) ** 2).mean()),
                "ece": float(ece),
            }
        )
    return pd.DataFrame(rows, columns=["model", "n_prompts", "mean_observed", "mean_predicted", "brier", "ece"])


def cost_curve(pred: pd.DataFrame, observed: pd.DataFrame, prices: dict[str, float]) -> pd.DataFrame:
    """Quality vs mean price over the models that have a price and labels on every prompt.

    Rows: method "router" (one per lambda), "model" (one model for every prompt) and
    "oracle" (the best observed model per prompt, cheapest on ties)."""
    models = [m for m in prices if m in observed.columns and m in pred.columns]
    cols = ["method", "label", "lambda", "mean_price", "quality"]
    if len(models) < 2:
        return pd.DataFrame(columns=cols)
    obs = observed[models].dropna()
    if obs.empty:
        return pd.DataFrame(columns=cols)
    p = pred.loc[obs.index, models].to_numpy(float)
    y = obs.to_numpy(float)
    price = np.array([prices[m] for m in models])
    scale = price.max() if price.max() > 0 else 1.0
    rows = []
    for lam in np.concatenate([[0.0], np.logspace(-3, 2, COST_SWEEP_POINTS - 1)]):
        # ties (equal utility) go to the cheaper model
        util = p - lam * price[None, :] / scale - 1e-9 * price[None, :]
        pick = util.argmax(axis=1)
        rows.append(
            {
                "method": "router",
                "label": "router",
                "lambda": float(lam),
                "mean_price": float(price[pick].mean()),
                "quality": float(y[np.arange(len(y)), pick].mean()),
            }
        )
    for j, m in enumerate(models):
        rows.append(
            {
                "method": "model",
                "label": m,
                "lambda": np.nan,
                "mean_price": float(price[j]),
                "quality": float(y[:, j].mean()),
            }
        )
    best = np.array([np.lexsort((price, -y[i]))[0] for i in range(len(y))])  # best observed, then cheapest
    rows.append(
        {
            "method": "oracle",
            "label": "oracle",
            "lambda": np.nan,
            "mean_price": float(price[best].mean()),
            "quality": float(y[np.arange(len(y)), best].mean()),
        }
    )
    return pd.DataFrame(rows, columns=cols)


def cost_plot(curve: pd.DataFrame, n: int) -> bytes:
    # matplotlib is heavy: imported when a plot is drawn, not with the evaluation
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))  # no pyplot global state (safe in a worker without a display)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    r = curve[curve["method"] == "router"].sort_values("mean_price")
    ax.plot(
        r["mean_price"], 100 * r["quality"], marker="o", color="tab:blue", label="router (quality - lambda x price)"
    )
    for _, row in curve[curve["method"] == "model"].iterrows():
        ax.scatter([row["mean_price"]], [100 * row["quality"]], s=60, zorder=5, label=f"{row['label']} alone")
    o = curve[curve["method"] == "oracle"]
    if len(o):
        ax.scatter(o["mean_price"], 100 * o["quality"], marker="*", s=160, color="tab:green", label="oracle")
    ax.set_xlabel("mean price of the chosen model ($ per 1M tokens, input + output)")
    ax.set_ylabel("observed quality (%)")
    ax.set_title(f"{OWN_BENCHMARK}: quality vs cost, {n} held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def read_own_labels(labels_ref: ArtifactRef, store) -> pd.DataFrame:
    """The labels table of a labels artifact, or OwnLabelsSkipped when it holds none of the run's own."""
    return checked_own_labels(store.read_parquet(f"{labels_ref.key}/data.parquet"))


def checked_own_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """`labels`, or OwnLabelsSkipped when it holds none of the run's own."""
    if "source" not in labels or not is_own_source(labels["source"]).any():
        raise OwnLabelsSkipped("the router's labels hold no labels of the run's own (only bundled ones)")
    return labels


def _holdout_predictions(router, observed: pd.DataFrame, plan: dict, trained: set[str]):
    held = observed[[pid in set(plan["heldout"]) for pid in observed.index]]
    leaked = held.index.intersection(pd.Index(sorted(trained)))
    if len(leaked):
        raise LeakageError(
            f"{OWN_BENCHMARK}: {len(leaked)} held-out prompts are in the router's training prompts "
            f"(e.g. prompt_id {leaked[0]}): it was not trained with this holdout, so it cannot be scored on it"
        )
    pred = router.predict_quality(held["_prompt"].tolist())
    pred.index = held.index
    return held, pred, pd.Series(-1, index=held.index, name="fold")


def _crossfit_predictions(
    router, labels_ref: ArtifactRef, labels: pd.DataFrame, observed: pd.DataFrame, plan: dict, store
):
    pair = observed[[router.strong_model, router.weak_model]].dropna().index
    scored = observed.loc[pair]
    order = sorted(scored.index, key=lambda p: hashlib.sha256(f"tela-own-crossfit:{p}".encode()).hexdigest())
    fold_of = pd.Series(np.arange(len(order)) % plan["folds"], index=order).reindex(scored.index)
    drop = {f: set(fold_of.index[fold_of == f]) for f in range(plan["folds"])}
    pred = _fold_predictions(
        router,
        labels_ref,
        labels,
        scored,
        fold_of,
        drop,
        store,
        lambda f: {"fold": f, "folds": plan["folds"], "heldout": sorted(drop[f])},
    )
    return scored, pred, fold_of.rename("fold")


def _fold_predictions(
    router,
    labels_ref: ArtifactRef,
    labels: pd.DataFrame,
    scored: pd.DataFrame,
    fold_of: pd.Series,
    drop: dict,
    store,
    fold_config,
) -> pd.DataFrame:
    """Per fold f: retrain the router's recipe on `labels` minus every prompt id in
    `drop[f]` (an artifact keyed by `fold_config(f)`), predict the scored prompts of fold f."""
    preds = []
    for f in sorted(drop):
        fl = labels[~labels["prompt_id"].astype(str).isin(drop[f])].reset_index(drop=True)
        fl_ref = run_stage(
            FOLDS_STAGE,
            FOLDS_VERSION,
            lambda c, fl=fl: c.write_table(fl),
            inputs={"labels": labels_ref},
            config=fold_config(f),
            store=store,
        )
        fold_ref = train_router(
            fl_ref,
            router_type=router.kind,
            strong_model=router.strong_model,
            weak_model=router.weak_model,
            router_params=router.params,
            use_gpu=False,
            own_holdout=False,
            artifact_root=store.root,
        )
        fold_router = load_router(fold_ref, store)
        texts = scored.loc[fold_of == f, "_prompt"].tolist()
        p = fold_router.predict_quality(texts)
        p.index = fold_of.index[fold_of == f]
        preds.append(p)
    return pd.concat(preds).loc[scored.index]


def evaluate_own_left_out(
    router, labels: pd.DataFrame, labels_ref: ArtifactRef, store, *, num_results: int, random_seeds: int
) -> tuple[pd.DataFrame, dict]:
    """(scores table, summary) of the own labels scored leave-one-group-out, or raise
    OwnLabelsSkipped with the reason (fewer than two groups big enough).

    Groups: the prompts' `category` if it gives at least two groups of
    `OWN_GROUP_MIN_PROMPTS` prompts labelled for both models, else the dataset. Each such
    group is a fold: the router's recipe is retrained on the labels minus *every* own
    prompt of that group and scores the group's prompts. The summary is the pooled figure
    (`metrics.summarize` over all scored prompts) plus each group's own APGR. `labels` is
    the table of the artifact `labels_ref` in `store` (the folds' retraining starts from it).
    """
    labels = checked_own_labels(labels)
    strong, weak = router.strong_model, router.weak_model
    own = labels[is_own_source(labels["source"]) & labels["quality"].notna()]
    observed = own_quality(labels)
    pair = observed[[strong, weak]].dropna().index if {strong, weak} <= set(observed.columns) else pd.Index([])
    tried = {}
    # noqa below: a B007 false positive, `protocol` is read after the loop (the grouping it broke on)
    for column, protocol in OWN_GROUPINGS:  # noqa: B007
        if column not in own or own[column].isna().all():
            tried[column] = "absent"
            continue
        # a prompt's group: its first non-null value (an assumed strong row may carry none)
        group_of = own.assign(prompt_id=own["prompt_id"].astype(str)).groupby("prompt_id")[column].first()
        group_of = group_of.astype("string").fillna("(none)")
        sizes = group_of.reindex(pair).value_counts()
        groups = sorted(str(g) for g in sizes.index[sizes >= OWN_GROUP_MIN_PROMPTS] if str(g) != "(none)")
        if len(groups) >= 2:
            break
        tried[column] = {str(k): int(v) for k, v in sizes.items()}
    else:
        raise OwnLabelsSkipped(
            f"leaving a kind of traffic out needs >= 2 categories (prompt file `category`) or datasets with "
            f">= {OWN_GROUP_MIN_PROMPTS} prompts labelled for both {strong} and {weak}; have {tried}"
        )
    scored_ids = [p for p in pair if group_of[p] in groups]
    scored = observed.loc[scored_ids]
    fold_of = pd.Series([groups.index(group_of[p]) for p in scored_ids], index=scored.index)
    own_ids = group_of.index.to_series()
    drop = {f: set(own_ids[group_of == g]) for f, g in enumerate(groups)}
    pred = _fold_predictions(
        router,
        labels_ref,
        labels,
        scored,
        fold_of,
        drop,
        store,
        lambda f: {"left_out": {column: groups[f]}, "heldout": sorted(drop[f])},
    )
    scores = router.strong_win_rate([], quality=pred)
    s = mx.summarize(scores, scored[strong], scored[weak], num_results=num_results, random_seeds=random_seeds)
    per = {}
    for f, g in enumerate(groups):
        rows = (fold_of == f).to_numpy()
        one = mx.summarize(
            scores[rows], scored[strong][rows], scored[weak][rows], num_results=num_results, random_seeds=random_seeds
        )
        per[g] = {
            "n_prompts": int(rows.sum()),
            "apgr": one["routellm"]["apgr"],
            "apgr_exact": one["exact"]["apgr"],
            "strong_mean": float(scored[strong][rows].mean()),
            "weak_mean": float(scored[weak][rows].mean()),
        }
    s["protocol"] = protocol
    s["group_by"] = column
    s["per_group"] = per
    s["left_in"] = sorted(str(g) for g in sizes.index if str(g) not in groups)
    table = pd.DataFrame(
        {
            "prompt_id": scored.index.astype(str),
            "prompt": scored["_prompt"].to_numpy(),
            "group": [groups[f] for f in fold_of],
            "strong_win_rate": scores,
            "strong_quality": scored[strong].to_numpy(float),
            "weak_quality": scored[weak].to_numpy(float),
        }
    )
    log.info(
        "%s %s (n=%d, %d groups): %s",
        OWN_BENCHMARK,
        protocol,
        len(scored),
        len(groups),
        {g: round(v["apgr_exact"], 3) if v["apgr_exact"] is not None else None for g, v in per.items()},
    )
    return table, s


def evaluate_own_labels(
    router,
    labels: pd.DataFrame,
    trained: set[str],
    *,
    prices: dict[str, float],
    num_results: int,
    random_seeds: int,
    max_prompts: int | None,
    quality_target: float = mx.SAVINGS_LEVEL,
    labels_ref: ArtifactRef | None = None,
    store=None,
):
    """(scores table, `metrics.summarize` summary + "calibration"/"cost_curve"/"plan") for the
    run's own labels in `labels`, or raise OwnLabelsSkipped with the reason.

    The holdout protocol (enough labels) needs the table only; the cross-fit protocol (few
    labels) retrains the router per fold, from the labels artifact `labels_ref` in `store`."""
    labels = checked_own_labels(labels)
    strong, weak = router.strong_model, router.weak_model
    plan = own_eval_plan(labels, strong, weak)
    if plan["protocol"] is None:
        raise OwnLabelsSkipped(plan["reason"])
    observed = own_quality(labels)
    if max_prompts is not None:
        # a deterministic subset (smallest prompt ids), like the RouteLLM benchmarks' cap
        keep = sorted(observed.index)[: max(max_prompts, 2 * (plan["folds"] or 1))]
        observed = observed.loc[keep] if plan["protocol"] == "crossfit" else observed
        if plan["protocol"] == "holdout":
            plan = {**plan, "heldout": sorted(set(plan["heldout"]) & set(observed.index))[:max_prompts]}
    if plan["protocol"] == "holdout":
        scored, pred, fold = _holdout_predictions(router, observed, plan, trained)
    else:
        if labels_ref is None or store is None:
            raise ValueError(
                f"{OWN_BENCHMARK}: {plan['why']}, which retrains the router: it needs the labels' "
                "artifact and store, not the table alone"
            )
        scored, pred, fold = _crossfit_predictions(router, labels_ref, labels, observed, plan, store)
    pair = scored[[strong, weak]].dropna().index
    if len(pair) < 2:
        raise OwnLabelsSkipped(f"only {len(pair)} held-out prompts are labelled for both {strong} and {weak}")
    scores = router.strong_win_rate([], quality=pred.loc[pair])
    s = mx.summarize(
        scores,
        scored.loc[pair, strong],
        scored.loc[pair, weak],
        num_results=num_results,
        random_seeds=random_seeds,
        quality_target=quality_target,
        prices=pair_prices(prices, strong, weak),
    )
    s["protocol"] = plan["protocol"]
    s["plan"] = {k: v for k, v in plan.items() if k != "heldout"} | {
        "n_heldout": len(plan["heldout"]) if plan["protocol"] == "holdout" else int(len(scored)),
        "heldout_sha256": hashlib.sha256("\n".join(sorted(scored.index)).encode()).hexdigest(),
    }
    s["calibration"] = calibration_table(pred, scored, router.models)
    s["cost_curve"] = cost_curve(pred, scored, prices)
    s["prices"] = dict(prices)
    table = pd.DataFrame(
        {
            "prompt_id": pair.astype(str),
            "prompt": scored.loc[pair, "_prompt"].to_numpy(),
            "strong_win_rate": scores,
            "strong_quality": scored.loc[pair, strong].to_numpy(float),
            "weak_quality": scored.loc[pair, weak].to_numpy(float),
            "category": pd.array([OWN_BENCHMARK] * len(pair), dtype="string"),
            "fold": fold.loc[pair].to_numpy(),
        }
    )
    log.info("%s (%s, n=%d): %s", OWN_BENCHMARK, plan["protocol"], len(pair), plan["why"])
    return table, s
