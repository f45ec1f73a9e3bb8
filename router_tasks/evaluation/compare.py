"""Compare routers: every evaluated router's curve on one plot per benchmark, plus a table.

Reads the evaluate artifacts (their `curves_<bench>.parquet`, `data.parquet` and
`metrics.json`), so nothing is scored again. Benchmarks evaluated for only some of the
routers are left out, since they would compare unlike things.

    stages/compare/<key>/
        compare_<bench>.png   RouteLLM-mode curves of all routers, random, oracle, strong/weak
        data.parquet          one row per (router, benchmark): APGR, AUC, CPT(20/50/80%)
        report.md             the table and the plots
"""

from __future__ import annotations

import json

import pandas as pd

from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.plots import finish_png, new_axes

STAGE = "compare"
STAGE_VERSION = "1"
COLUMNS = [
    "router",
    "kind",
    "benchmark",
    "protocol",
    "n_prompts",
    "apgr",
    "auc",
    "cpt20",
    "cpt50",
    "cpt80",
    "apgr_exact",
]


def _plot(bench: str, curves: dict[str, pd.DataFrame], baseline: pd.DataFrame, row: pd.Series) -> bytes:
    fig, ax = new_axes()
    for label, c in curves.items():
        ax.plot(100 * c["strong_share"], c["quality"], marker="o", markersize=3, label=label)
    for method, style in (
        ("random", dict(color="tab:gray", linestyle="-", marker=".")),
        ("oracle", dict(color="tab:green", linestyle=":")),
    ):
        c = baseline[(baseline["mode"] == "routellm") & (baseline["method"] == method)]
        ax.plot(100 * c["strong_share"], c["quality"], label=method, **style)
    ax.axhline(row["strong_quality"], color="tab:red", linestyle="--", label=f"strong: {row['strong_model']}")
    ax.axhline(row["weak_quality"], color="black", linestyle="--", label=f"weak: {row['weak_model']}")
    ax.set_ylabel("quality")
    ax.set_title(f"{bench}: routers compared ({int(row['n_prompts'])} prompts)")
    return finish_png(fig, ax)


def compare_routers(evaluations, *, artifact_root: str | None = None) -> dict:
    """`evaluations`: evaluate refs (a list, or Airflow's mapped results). Returns the ref."""
    refs = [evaluations[i] for i in range(len(evaluations))]  # index: works for mapped XComs too
    if not refs:
        raise ValueError("no evaluations to compare")
    inputs = {f"evaluation:{i}": ref for i, ref in enumerate(refs)}

    def compute(ctx) -> None:
        tables, reports = {}, {}
        for name in inputs:
            tables[name] = ctx.read_input(name)
            reports[name] = json.loads(ctx.store.read_bytes(f"{ctx.inputs[name].key}/metrics.json"))
        common = set.intersection(*(set(t["benchmark"]) for t in tables.values()))
        rows, lines = [], []
        for bench in sorted(common):
            curves, first = {}, None
            for name, table in tables.items():
                router = reports[name]["router"]
                row = table.set_index("benchmark").loc[bench]
                label = f"{router['kind']} {router['key'].rsplit('/', 1)[-1][:8]} (APGR {row['apgr']:.3f})"
                c = ctx.store.read_parquet(f"{ctx.inputs[name].key}/curves_{bench}.parquet")
                curves[label] = c[(c["mode"] == "routellm") & (c["method"] == "router")]
                first = first if first is not None else (c, row)
                rows.append(
                    {
                        "router": router["key"],
                        "kind": router["kind"],
                        "benchmark": bench,
                        **{k: row.get(k) for k in COLUMNS[3:]},
                    }
                )
            ctx.write_file(f"compare_{bench}.png", _plot(bench, curves, *first))
            lines.append(f"![{bench}](compare_{bench}.png)")
        table = pd.DataFrame(rows, columns=COLUMNS)
        ctx.write_table(table)
        md = [
            "# Routers compared",
            "",
            "| router | kind | benchmark | protocol | prompts | APGR | CPT(50%) | CPT(80%) |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        md += [
            f"| `{r.router}` | {r.kind} | {r.benchmark} | {r.protocol} | {r.n_prompts} | {r.apgr:.3f} | "
            f"{100 * r.cpt50:.1f}% | {100 * r.cpt80:.1f}% |"
            for r in table.itertuples()
        ]
        ctx.write_file("report.md", ("\n".join(md + [""] + lines) + "\n").encode())
        ctx.stats.update(routers=len(refs), benchmarks=sorted(common))

    return run_stage(STAGE, STAGE_VERSION, compute, inputs=inputs, store=ArtifactStore(artifact_root))
