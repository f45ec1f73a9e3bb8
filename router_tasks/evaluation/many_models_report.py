"""What the many-model evaluation writes: the metrics table, metrics.md and the plot."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from router_tasks.evaluation.many_models_data import CROSSFIT


def metrics_table(result: dict) -> pd.DataFrame:
    rows = []
    for policy, m in result["metrics"].items():
        rows.append(
            {
                "policy": policy,
                "share of oracle area": m["share_of_oracle_area"],
                "worst gap to hull (pt)": m["min_gap_to_hull_points"],
                "range on/above hull": m["share_of_range_on_or_above_hull"],
                "cost to match best (share)": m["cost_to_match_best_share"],
                "acc at cheapest cost": m["accuracy_at_cheapest_cost"],
                "max acc": m["max_accuracy"],
            }
        )
    return pd.DataFrame(rows)


def render_markdown(result: dict) -> str:
    b, c = result["best_single"], result["cheapest_single"]
    how = (
        f"{result['folds']}-fold cross-fit by prompt"
        if result["protocol"] == CROSSFIT
        else f"leave-task-out: routers trained on all {result['trained_on']['prompts']} prompts of "
        f"{result['trained_on']['task']!r}, none of this task"
    )
    lines = [
        f"# {result['benchmark']}: {len(result['pool'])} models, {result['prompts']} prompts, {how}",
        "",
        f"Best single model: {b['model']} {100 * b['accuracy']:.2f}% at ${b['cost_per_1k']:.3f}/1k prompts; "
        f"cheapest: {c['model']} at ${c['cost_per_1k']:.4f}/1k. Oracle area over the hull = 1.",
        "",
        "| model | $/1k prompts | accuracy % |",
        "|---|---:|---:|",
    ]
    for s in sorted(result["single_models"], key=lambda s: s["cost_per_1k"]):
        lines.append(f"| {s['model']} | {s['cost_per_1k']:.4f} | {100 * s['accuracy']:.2f} |")
    lines += [
        "",
        "| policy | share of oracle area | worst gap to hull (pt) | range on/above hull | "
        "cost to match best (share of its cost) | acc at cheapest cost % | max acc % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v, fmt):
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)

    for _, r in metrics_table(result).iterrows():
        lines.append(
            f"| {r['policy']} | {f(r['share of oracle area'], '.3f')} | {f(r['worst gap to hull (pt)'], '.2f')} | "
            f"{f(r['range on/above hull'], '.2f')} | {f(r['cost to match best (share)'], '.3f')} | "
            f"{f(None if r['acc at cheapest cost'] is None else 100 * r['acc at cheapest cost'], '.2f')} | "
            f"{f(None if r['max acc'] is None else 100 * r['max acc'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def plot_png(result: dict) -> bytes:
    # matplotlib is heavy: imported when a plot is drawn, not with the evaluation
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    one_call = (
        "one call per prompt"
        if result["protocol"] == CROSSFIT
        else f"one call per prompt, routers trained on {result['trained_on']['task']!r} only"
    )
    panels = [
        (one_call, [p for p in curve["policy"].unique() if p.startswith("router-")]),
        ("cascades", [p for p in curve["policy"].unique() if p.startswith("cascade-")]),
    ]
    panels = [panels[0]] + [pn for pn in panels[1:] if pn[1]]  # no empty cascades panel
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (title, policies) in zip(axes, panels, strict=False):
        for s in result["single_models"]:
            ax.scatter(s["cost_per_1k"], 100 * s["accuracy"], color="black", s=18, zorder=3)
            ax.annotate(
                s["model"].split("/")[-1][:22],
                (s["cost_per_1k"], 100 * s["accuracy"]),
                fontsize=6,
                xytext=(3, -8),
                textcoords="offset points",
            )
        ax.plot(
            result["hull"]["cost_per_1k"], 100 * np.array(result["hull"]["accuracy"]), "k--", label="zero router (hull)"
        )
        ax.plot(
            result["oracle"]["cost_per_1k"],
            100 * np.array(result["oracle"]["accuracy"]),
            ":",
            color="gray",
            label="oracle",
        )
        ax.scatter(
            result["random"]["cost_per_1k"],
            100 * result["random"]["accuracy"],
            marker="x",
            color="red",
            label="random",
            zorder=4,
        )
        for p in policies:
            g = curve[curve["policy"] == p].sort_values("cost_per_1k")
            ax.plot(g["cost_per_1k"], 100 * g["accuracy"], marker="o", ms=3, label=p)
        ax.set_xscale("log")
        ax.set_xlabel("$ per 1k prompts (log)")
        ax.set_title(f"{result['benchmark']}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        lo = min(100 * s["accuracy"] for s in result["single_models"])
        ax.set_ylim(max(lo - 2, 0), 100.5)
    axes[0].set_ylabel("accuracy %")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
