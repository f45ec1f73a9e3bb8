"""The evaluation report (`report.md` of an evaluate artifact): the headline table per
benchmark, the strong-model calls saved at 95% of the strong model's quality, the run's own
labels (calibration, quality vs cost, each kind left out), the plots beside it."""

from __future__ import annotations

import math

from router_tasks.core.schemas import OWN_BENCHMARK

#: the own labels, each category (or dataset) left out in turn (`own_labels.evaluate_own_left_out`)
OWN_LEFT_OUT = f"{OWN_BENCHMARK}-left-out"


def savings_section(rows: list[dict], target: float | None, num) -> list[str]:
    """The headline table: strong-model calls (and dollars) saved at 95% of the strong
    model's quality, and at the run's `quality_target`, in both curve modes."""
    target = 0.95 if target is None else float(target)
    other = abs(target - 0.95) > 1e-12
    head = "| benchmark | calls saved at 95% | exact |"
    rule = "|---|---:|---:|"
    if other:
        head += f" at {100 * target:g}% | exact |"
        rule += "---:|---:|"
    head += " dollars saved at 95% | exact | random router at 95% | oracle at 95% |"
    rule += "---:|---:|---:|---:|"
    out = [
        "## Strong-model calls saved at 95% of the strong model's quality",
        "",
        "The share of calls to the strong model the router saves while the routed answers keep 95% of the strong "
        "model's mean quality (above the scale's floor: MT-Bench grades start at 1), where the quality-vs-calls curve "
        "first reaches it; dollars: that share times (1 - weak price / strong price), where both models have a "
        "price (`models` endpoint prices or `prices`).",
        "",
        head,
        rule,
    ]
    for row in rows:
        line = (
            f"| {row['benchmark']} | {num(row.get('calls_saved_at_95'), True)} | "
            f"{num(row.get('calls_saved_at_95_exact'), True)} |"
        )
        if other:
            line += (
                f" {num(row.get('calls_saved_at_target'), True)} | "
                f"{num(row.get('calls_saved_at_target_exact'), True)} |"
            )
        line += (
            f" {num(row.get('dollars_saved_at_95'), True)} | {num(row.get('dollars_saved_at_95_exact'), True)} | "
            f"{num(row.get('random_calls_saved_at_95'), True)} | {num(row.get('oracle_calls_saved_at_95'), True)} |"
        )
        out.append(line)
    return out + [""]


def render_report(report: dict, rows: list[dict], *, data_fingerprint: str, labels: dict) -> str:
    """The human-readable evaluation report: tables, plots (beside it), protocol, fingerprints."""

    def num(v, pct=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    router = report["router"]
    out = [
        f"# Evaluation of router `{router['key']}`",
        "",
        f"- router: {router['kind']} for {report['strong_model']} (strong) vs {report['weak_model']} (weak), "
        f"fingerprint `{router['fingerprint']}`",
        f"- strong model quality: **{report.get('strong_quality', 'labeled')}** "
        "(labeled: judged like every endpoint; assume_perfect: never asked for labels, counted 5/5)",
        f"- trained on labels `{labels.get('labels_key', '?')}` "
        f"(fingerprint `{labels.get('labels_fingerprint', '?')}`), "
        f"{router['n_train_prompts']} prompts; none of them is scored below (checked)",
        f"- benchmark data fingerprint `{data_fingerprint}`; holdout: {report['holdout']}",
        "- protocols: *holdout* = the fixed evaluation split the labels stage never trains on; "
        "*transfer* = a benchmark the router never trains on (decontaminated); "
        "*crossfit* = k folds by prompt, the router's recipe retrained without each scored fold; "
        "*leave-group-out* = folds by group (MMLU subject, task), no group both trained on and scored "
        "(`tela evaluate --protocol crossfit|leave-group-out --output DIR`)",
        "",
        "| benchmark | protocol | prompts | APGR | AUC | CPT(20%) | CPT(50%) | CPT(80%) | random APGR | oracle APGR | "
        "APGR exact | calls saved at 95% | saved at 95% exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row['benchmark']} | {row['protocol']} | {row['n_prompts']} | {num(row.get('apgr'))} | "
            f"{num(row.get('auc'))} | {num(row.get('cpt20'), True)} | {num(row.get('cpt50'), True)} | "
            f"{num(row.get('cpt80'), True)} | {num(row.get('random_apgr'))} | {num(row.get('oracle_apgr'))} | "
            f"{num(row.get('apgr_exact'))} | {num(row.get('calls_saved_at_95'), True)} | "
            f"{num(row.get('calls_saved_at_95_exact'), True)} |"
        )
    out += [
        "",
        "Metrics in RouteLLM's repo mode unless marked *exact*; CPT is the share of strong-model calls "
        "needed to reach that share of the strong-weak quality gap.",
        "",
    ]
    out += savings_section(rows, report.get("quality_target"), num)
    for bench, why in (report.get("skipped") or {}).items():
        out.append(f"- skipped {bench}: {why}")
    if report.get("skipped"):
        out.append("")
    own = report["benchmarks"].get(OWN_BENCHMARK)
    if own:
        plan = own["plan"]
        out += [
            f"## {OWN_BENCHMARK}",
            "",
            f"The run's own prompts, endpoints and judge. Protocol **{plan['protocol']}**: {plan.get('why', '')}.",
            "",
            f"![{OWN_BENCHMARK}](plot_{OWN_BENCHMARK}.png)",
            "",
            "Predicted vs observed quality per model (held-out prompts):",
            "",
            "| model | prompts | observed | predicted | Brier | calibration error (ECE) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in own["calibration"]:
            out.append(
                f"| {c['model']} | {c['n_prompts']} | {num(c['mean_observed'])} | {num(c['mean_predicted'])} | "
                f"{num(c['brier'])} | {num(c['ece'])} |"
            )
        curve = [c for c in own["cost_curve"] if c["method"] != "router"]
        if curve:
            out += [
                "",
                "Quality vs cost over every priced model (price = $ per 1M tokens, input + output):",
                "",
                "| choice | mean price | observed quality |",
                "|---|---:|---:|",
            ]
            for c in curve:
                out.append(f"| {c['label']} | {num(c['mean_price'])} | {num(c['quality'])} |")
            router_pts = [c for c in own["cost_curve"] if c["method"] == "router"]
            best = max(router_pts, key=lambda c: (c["quality"], -c["mean_price"]))
            cheap = min(router_pts, key=lambda c: (c["mean_price"], -c["quality"]))
            out += [
                f"| router, best quality | {num(best['mean_price'])} | {num(best['quality'])} |",
                f"| router, cheapest | {num(cheap['mean_price'])} | {num(cheap['quality'])} |",
                "",
                f"![cost](plot_cost_{OWN_BENCHMARK}.png)",
            ]
        else:
            out += [
                "",
                "No quality-vs-cost curve: fewer than two models have a price (endpoint "
                "`price_input_per_m` / `price_output_per_m`) and labels on the same prompts.",
            ]
        out.append("")
    left_out = report.get("own_left_out")
    if left_out and "per_group" in left_out:
        kind = "dataset" if left_out["group_by"] == "benchmark" else left_out["group_by"]
        out += [
            f"## {OWN_BENCHMARK}, each {kind} left out ({left_out['protocol']})",
            "",
            f"Each {kind} of the run's own prompts scored by a router retrained without any prompt of it: how "
            "the router does on a kind of traffic it has no labels for. Not part of the publish metric.",
            "",
            f"Pooled: {left_out['n_prompts']} prompts, APGR {num(left_out['routellm']['apgr'])} "
            f"(exact {num(left_out['exact']['apgr'])}), random {num(left_out['routellm']['random_apgr'])}.",
            "",
            f"| {kind} left out | prompts | strong mean | weak mean | APGR | APGR exact |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for g, v in left_out["per_group"].items():
            out.append(
                f"| {g} | {v['n_prompts']} | {num(v['strong_mean'])} | {num(v['weak_mean'])} | "
                f"{num(v['apgr'])} | {num(v['apgr_exact'])} |"
            )
        if left_out.get("left_in"):
            out += ["", f"Too small to score alone (always in training): {', '.join(left_out['left_in'])}."]
        out.append("")
    elif left_out and left_out.get("skipped"):
        out += [f"- {OWN_BENCHMARK}, each kind left out: not scored ({left_out['skipped']})", ""]
    for row in rows:
        if row["benchmark"] != OWN_BENCHMARK:
            out += [f"## {row['benchmark']}", "", f"![{row['benchmark']}](plot_{row['benchmark']}.png)", ""]
    return "\n".join(out) + "\n"
