"""Many-model routing and cascades on real replies (ZeroEval GSM8K and CRUXEval).

    python benchmark_scripts/many_models.py                      # both tasks, knn router
    python benchmark_scripts/many_models.py --router-types knn,mf,ensemble --out /tmp/mm
    python benchmark_scripts/many_models.py --tasks crux --pool all   # every priced model
    python benchmark_scripts/many_models.py --protocol leave-group-out --router-types random,knn,mf,ensemble

For each task: 5-fold cross-fit by prompt, the default 10-model pool of
`router_tasks.data.zeroeval.POOLS` (fixed by price tier before any result was looked at)
or `--pool all` (every model with a price that answered every prompt: no pool choice at
all). Prints the single models, then one row per policy (area between its curve and the
zero-router hull as a share of the oracle's, worst gap under the hull, cost at which it
matches the best single model as a share of that model's cost, accuracy at the cheapest
model's cost), then the issue's goals, met or not. Every figure is measured on prompts
whose settings were chosen on other prompts (nested cross-fitting); writes each task's
metrics.json, metrics.md, curve.csv, plot.png and decisions.parquet under --out.

`--protocol leave-group-out` folds by task instead: each task is scored by routers trained
on all of the other task's prompts (the pool: the task's default pool less the models the
other task has no replies from), no cascades; `--no-cascades` drops them from a cross-fit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from router_tasks.data import zeroeval as ze  # noqa: E402
from router_tasks.evaluation import many_models as mm  # noqa: E402

GOALS = {"gsm": 0.15, "crux": 0.50}  # cascades: best single model's accuracy at <= this share of its cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="gsm,crux")
    ap.add_argument("--router-types", default="knn")
    ap.add_argument("--pool", default="default", help="'default', 'all', or comma-separated models")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default="/tmp/tela-many-models")
    ap.add_argument("--artifact-root", default=None, help="caches prompt embeddings between runs")
    ap.add_argument("--protocol", default=mm.CROSSFIT, choices=list(mm.PROTOCOLS))
    ap.add_argument("--no-cascades", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("great_expectations", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    kinds = [k for k in args.router_types.split(",") if k]
    summary = {}
    for task in args.tasks.split(","):
        if args.pool == "default":
            pool = None
        elif args.pool == "all":
            prices = ze.bundled_prices()
            pool = [m for m in ze.models(task) if m in prices]
        else:
            pool = args.pool.split(",")
        bench = {v: k for k, v in ze.BENCHMARKS.items()}[task]
        t0 = time.time()
        res = mm.evaluate_to_dir(
            bench,
            str(Path(args.out) / bench),
            pool=pool,
            folds=args.folds,
            router_kinds=kinds,
            artifact_root=args.artifact_root,
            protocol=args.protocol,
            cascades=not args.no_cascades,
        )
        print()
        print(mm.render_markdown(res))
        m = res["metrics"]
        one_call = {p: v for p, v in m.items() if p.startswith("router-") and not p.endswith("-raw")}
        if not one_call:
            print(f"{bench}: {res['prompts']} prompts, {len(res['pool'])} models, {time.time() - t0:.0f} s")
            continue
        best_router = max(one_call, key=lambda p: one_call[p]["share_of_oracle_area"] or -1)
        r = one_call[best_router]
        casc = m.get("cascade-any")
        goal = GOALS[task]
        match = None if casc is None else casc["cost_to_match_best_share"]
        lines = [
            f"{bench} ({res['protocol']}): one call per prompt, best router {best_router}: "
            f"{r['share_of_oracle_area']:.3f} of the "
            f"oracle's area (goal >= 0.15: {'met' if r['share_of_oracle_area'] >= 0.15 else 'NOT met'}); "
            f"worst gap to the hull {r['min_gap_to_hull_points']:.2f} pt, on/above it over "
            f"{100 * r['share_of_range_on_or_above_hull']:.0f}% of the cost range "
            f"(goal: all of it: {'met' if r['share_of_range_on_or_above_hull'] >= 0.999 else 'NOT met'})",
        ]
        if casc is not None:
            best_cascade = max(v["share_of_oracle_area"] for p, v in m.items() if p.startswith("cascade-"))
            lines.append(
                f"{bench}: cascades reach the best single model's accuracy at "
                f"{'never' if match is None else f'{100 * match:.1f}%'} of its cost (goal <= {100 * goal:.0f}%: "
                f"{'met' if match is not None and match <= goal else 'NOT met'}); best cascade family share of "
                f"oracle area {best_cascade:.3f}"
            )
        lines += [
            f"{bench}: {res['prompts']} prompts, {len(res['pool'])} models, {time.time() - t0:.0f} s",
        ]
        for line in lines:
            print(line)
        summary[bench] = {
            "best_router": best_router,
            "router": r,
            "cascade_any": casc,
            "seconds": round(time.time() - t0),
        }
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
