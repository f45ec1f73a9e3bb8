"""Cross-fit evaluation: every benchmark prompt scored by a router that never saw it.

For a benchmark whose labels are (or could be) training data, a "transfer" score of a
router trained on them is meaningless and a fixed holdout wastes most of the benchmark.
Cross-fitting (the issue's "crossfit" protocol) uses all of it:

1. split the benchmark's decontaminated prompts into k folds by prompt (balanced and
   deterministic: prompt ids ordered by a salted hash, dealt round-robin);
2. for each fold, retrain the *named router's recipe* (kind, params, strong/weak from its
   router.json) on its own training labels (the `labels` input recorded in its train
   manifest) minus every held-out prompt, plus the benchmark labels of the other folds;
3. score the held-out fold with that fold's router, stitch the k folds into one score
   per prompt and compute the usual metrics (`metrics.summarize`, both curve modes).

Leakage is asserted, not assumed: each fold router's `train_prompts.parquet` must be
disjoint from the prompts it scores, and every benchmark prompt is scored exactly once.

The "leave-group-out" protocol is the same loop with folds by *group* instead
of by prompt, so no group has prompts both in a fold's training labels and among the
prompts it scores: a router meets topics it never saw, as a team's own traffic will.
The group is a column of the benchmark table (`group_column`): MMLU folds by subject
(`category`); a benchmark without a group column (GSM8K, MT-Bench) is held out whole
(one fold: the router trains on everything except that benchmark, i.e. transfer); data
with a task column (many-model suites) passes its name. Every prompt of a held-out group
leaves the training labels, not only the scored ones (`max_prompts` caps scoring only).

Each fold's labels and router are ordinary artifacts (`crossfit_labels`, `train`), so a
re-run reuses them; the whole evaluation is one `crossfit` artifact laid out like an
evaluate artifact (data.parquet row with `apgr`, metrics.json, scores_/curves_/plot_
<bench>) plus `folds.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import pandas as pd

from router_tasks.core.stage import ArtifactRef, resolve_ref, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.evaluation import metrics as mx
from router_tasks.evaluation.benchmark import (
    QUALITY_FLOOR,
    QUALITY_UNITS,
    LeakageError,
    check_no_leakage,
    commercial_points,
    scored_table,
    strong_win_scores,
    train_prompt_ids,
    write_benchmark_outputs,
)
from router_tasks.evaluation.own_labels import pair_prices
from router_tasks.routers import ROUTER_FILE, load_router, resolve_router_key
from router_tasks.training.train import train_router, training_labels_ref

log = logging.getLogger(__name__)

STAGE = "crossfit"
LABELS_STAGE = "crossfit_labels"
STAGE_VERSION = "2"  # 2: strong-model calls saved at 95% of its quality
LABELS_STAGE_VERSION = "1"  # a fold's labels: their own version, so fold routers are reused across STAGE_VERSION
PROTOCOL = "crossfit"
LEAVE_GROUP_OUT = "leave-group-out"
#: the protocols this module runs, with the label reports print beside their figures
PROTOCOL_LABELS = {
    PROTOCOL: "cross-fit by prompt: k folds of prompts; a fold's router trained on every other fold",
    LEAVE_GROUP_OUT: "leave-group-out: folds by group (MMLU subject, a task); no group is both trained on and "
    "scored; a benchmark without groups is held out whole (transfer)",
}
#: benchmark -> its default group column for leave-group-out (absent: the whole benchmark)
GROUP_COLUMNS = {"mmlu": "category"}

#: benchmark quality -> label quality in [0, 1]. MT-Bench grades are 1-10 (GPT-4 judge),
#: mapped linearly like the 1-5 judge scores of the labels stage ((s - 1) / 4).
_QUALITY_RANGE = {"mt-bench": (1.0, 10.0)}


def assign_folds(prompt_ids, folds: int, seed: int = 0) -> pd.Series:
    """Fold number (0..folds-1) per prompt id, indexed by prompt id.

    Ordering by a salted hash and dealing round-robin gives folds whose sizes differ by at
    most one, and the same prompts always land in the same fold for a given seed.
    """
    ids = pd.Index(pd.unique(pd.Series(list(prompt_ids), dtype=str)))
    if folds < 2:
        raise ValueError(f"cross-fit needs at least 2 folds, got {folds}")
    if len(ids) < folds:
        raise ValueError(f"cross-fit: {len(ids)} prompts cannot fill {folds} folds")
    order = sorted(ids, key=lambda p: hashlib.sha256(f"tela-crossfit:{seed}:{p}".encode()).hexdigest())
    return pd.Series(np.arange(len(order)) % folds, index=pd.Index(order, name="prompt_id"), name="fold").reindex(ids)


def assign_group_folds(groups: pd.Series, folds: int, seed: int = 0) -> pd.Series:
    """Fold number per row of `groups` (a group label per prompt, same index), by group.

    Groups are dealt largest first (ties broken by a salted hash) to the fold with the
    fewest prompts so far, so folds are about equal in prompts and deterministic for a
    seed; every prompt of a group lands in the same fold. Fewer groups than `folds` give
    one fold per group. Null groups are an error: say which group a prompt belongs to.
    """
    if groups.isna().any():
        raise ValueError(
            f"leave-group-out: {int(groups.isna().sum())} prompts have no group "
            f"(first: index {groups.index[groups.isna()][0]})"
        )
    if folds < 1:
        raise ValueError(f"leave-group-out needs at least 1 fold, got {folds}")
    sizes = groups.astype(str).value_counts()
    order = sorted(
        sizes.index, key=lambda g: (-int(sizes[g]), hashlib.sha256(f"tela-lgo:{seed}:{g}".encode()).hexdigest())
    )
    k = min(folds, len(order))
    load = np.zeros(k, dtype=np.int64)
    fold_of_group = {}
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += int(sizes[g])
    return groups.astype(str).map(fold_of_group).astype(int).rename("fold")


def protocol_folds(
    table: pd.DataFrame, protocol: str, folds: int, seed: int, group_column: str | None
) -> tuple[pd.Series, pd.Series | None]:
    """(fold per row of `table`, group per row or None) for `protocol`."""
    if protocol == PROTOCOL:
        fold_of = assign_folds(table["prompt_id"], folds, seed)
        return table["prompt_id"].map(fold_of).astype(int), None
    if protocol != LEAVE_GROUP_OUT:
        raise ValueError(f"unknown cross-fit protocol {protocol!r}; expected one of {sorted(PROTOCOL_LABELS)}")
    if group_column is None:
        groups = pd.Series("<whole benchmark>", index=table.index)
    else:
        if group_column not in table.columns:
            raise ValueError(
                f"leave-group-out: benchmark table has no column {group_column!r}; has {list(table.columns)}"
            )
        groups = table[group_column]
    return assign_group_folds(groups, folds, seed), groups.astype(str)


def benchmark_labels(bench: str, prompt_ids, models) -> pd.DataFrame:
    """Labels-schema rows for `prompt_ids` of benchmark `bench`, for those of `models` it has."""
    b = bm.get_benchmark(bench)
    long = b.quality(decontaminate=True)
    long = long[long["prompt_id"].isin(set(prompt_ids)) & long["model"].isin(list(models))]
    long = long.drop_duplicates(["prompt_id", "model"]).dropna(subset=["quality"])
    lo, hi = _QUALITY_RANGE.get(bench, (0.0, 1.0))
    quality = (long["quality"].astype(float) - lo) / (hi - lo)
    correct = long["correct"].astype("boolean") if "correct" in long else pd.array([pd.NA] * len(long), dtype="boolean")
    return pd.DataFrame(
        {
            "prompt_id": long["prompt_id"].astype(str).to_numpy(),
            "prompt": long["prompt"].astype(str).to_numpy(),
            "model": long["model"].astype(str).to_numpy(),
            "score": pd.array([pd.NA] * len(long), dtype="Int64"),
            "correct": pd.array(correct, dtype="boolean"),
            "quality": pd.array(quality.to_numpy(), dtype="Float64"),
            "source": f"routellm:{bench}",
            "benchmark": pd.array([bench] * len(long), dtype="string"),
        }
    )


def fold_labels(train_labels: pd.DataFrame, bench_labels: pd.DataFrame, heldout: set[str]) -> pd.DataFrame:
    """The training labels minus every held-out prompt, plus the benchmark labels of the
    other folds' prompts that the training labels do not already cover."""
    keep = train_labels[~train_labels["prompt_id"].astype(str).isin(heldout)]
    have = set(keep["prompt_id"].astype(str))
    extra = bench_labels[~bench_labels["prompt_id"].isin(heldout) & ~bench_labels["prompt_id"].isin(have)]
    cols = list(keep.columns)
    extra = extra.reindex(columns=cols)
    out = pd.concat([keep, extra], ignore_index=True) if len(extra) else keep.reset_index(drop=True)
    return out


def _group_members(b, full: pd.DataFrame, group_column: str | None) -> pd.Series:
    """Group per prompt id for every prompt of the benchmark files, contaminated and
    unrated ones included (they may sit in a router's training labels), where the group
    is known: the whole benchmark, or its category; else the table's own rows."""
    if group_column is None or group_column == "category":
        long = b.quality(decontaminate=False).drop_duplicates("prompt_id")
        if group_column is None:
            return pd.Series("<whole benchmark>", index=pd.Index(long["prompt_id"].astype(str)))
        return pd.Series(long["category"].astype(str).to_numpy(), index=pd.Index(long["prompt_id"].astype(str)))
    return pd.Series(full["group"].to_numpy(), index=pd.Index(full["prompt_id"].astype(str)))


def check_fold_disjoint(bench: str, fold: int, scored: pd.DataFrame, trained: set[str]) -> None:
    """Raise LeakageError if fold `fold`'s router trained on a prompt it is about to score."""
    try:
        check_no_leakage(bench, scored, trained)
    except LeakageError as e:
        raise LeakageError(f"cross-fit fold {fold}: {e}") from None


def crossfit_evaluate(
    router: dict | str,
    benchmark: str,
    *,
    folds: int = 5,
    seed: int = 0,
    labels: dict | None = None,
    num_results: int = 10,
    random_seeds: int = 10,
    max_prompts: int | None = None,
    artifact_root: str | None = None,
    protocol: str = PROTOCOL,
    group_column: str | None = "default",
    quality_target: float = mx.SAVINGS_LEVEL,
    prices: dict[str, float] | None = None,
) -> dict:
    """Cross-fit the recipe of train artifact `router` on `benchmark`; returns the crossfit ref.

    `protocol`: "crossfit" (folds by prompt) or "leave-group-out" (folds by
    `group_column` of the benchmark table; "default" = `GROUP_COLUMNS` for the benchmark,
    None = the whole benchmark held out in one fold).

    `router`: a train ref dict, key/URI or "champion". `labels`: the training labels to
    retrain on (default: the ones the router was trained on, from its manifest).
    `max_prompts`: cross-fit only the first N benchmark prompts by id (quick runs; the
    report says n). The returned artifact's data.parquet has the evaluate stage's columns,
    so `publish_router` can read it. `quality_target` and `prices` ({model: $ per 1M
    tokens}): the savings figures, as in `evaluate_router`.
    """
    store = ArtifactStore(artifact_root)
    bm.iter_benchmarks([benchmark])  # unknown names fail before any work
    rstore, rkey = resolve_router_key(router, store)
    if rstore.root != store.root:
        store = rstore  # fold artifacts live beside the router they retrain
    router_ref = ArtifactRef.of(resolve_ref(rkey, store))
    labels_ref = (
        ArtifactRef.of(labels) if labels is not None else ArtifactRef.of(training_labels_ref(store, router_ref))
    )
    meta = store.read_json(f"{router_ref.key}/{ROUTER_FILE}")
    strong, weak = meta["strong_model"], meta["weak_model"]

    if protocol not in PROTOCOL_LABELS:
        raise ValueError(f"unknown cross-fit protocol {protocol!r}; expected one of {sorted(PROTOCOL_LABELS)}")
    if protocol == PROTOCOL:
        group_column = None
    elif group_column == "default":
        group_column = GROUP_COLUMNS.get(benchmark)
    config = {
        "benchmark": benchmark,
        "folds": folds,
        "seed": seed,
        "num_results": num_results,
        "random_seeds": random_seeds,
        "max_prompts": max_prompts,
        "data": bm.data_fingerprint(),
        "quality_target": float(quality_target),
        "prices": {str(k): float(v) for k, v in sorted((prices or {}).items())},
    }
    if protocol != PROTOCOL:  # only when set: cross-fit artifacts keep their keys
        config.update(protocol=protocol, group_column=group_column)

    def compute(ctx) -> None:
        started = time.time()
        b = bm.get_benchmark(benchmark)
        full = b.table(strong, weak, split="all")
        if protocol == PROTOCOL and max_prompts is not None and len(full) > max_prompts:
            full = full.sort_values("prompt_id").head(max_prompts).reset_index(drop=True)
        # by prompt: folds over the scored prompts; by group: over the whole benchmark,
        # so a capped run holds out the same groups as a full one
        fold_col, group_of = protocol_folds(full, protocol, folds, seed, group_column)
        full["fold"] = fold_col.to_numpy()
        if group_of is not None:
            full["group"] = group_of.to_numpy()
        table = full
        if max_prompts is not None and len(table) > max_prompts:
            table = table.sort_values("prompt_id").head(max_prompts).reset_index(drop=True)
        n_folds = int(full["fold"].max()) + 1
        train_labels = ctx.read_input("labels")
        bench_labels = benchmark_labels(benchmark, table["prompt_id"], meta["models"])
        members = _group_members(b, full, group_column) if group_of is not None else None

        parts, fold_rows = [], []
        for f in range(n_folds):
            heldout_table = table[table["fold"] == f]
            if not len(heldout_table):
                continue  # a capped run may leave a fold with nothing to score
            heldout = set(heldout_table["prompt_id"])
            if members is not None:  # the whole of every held-out group, scored or not
                held_groups = set(full.loc[full["fold"] == f, "group"])
                heldout |= set(members.index[members.isin(held_groups)])
            fl = fold_labels(train_labels, bench_labels, heldout)
            fl_ref = run_stage(
                LABELS_STAGE,
                LABELS_STAGE_VERSION,
                lambda c, fl=fl: c.write_table(fl),
                inputs={"labels": labels_ref},
                config={
                    **{
                        k: config[k]
                        for k in ("benchmark", "folds", "seed", "max_prompts", "data", "protocol", "group_column")
                        if k in config
                    },
                    "fold": f,
                    "models": sorted(meta["models"]),
                },
                store=ctx.store,
            )
            fold_ref = train_router(
                fl_ref,
                router_type=meta["kind"],
                strong_model=strong,
                weak_model=weak,
                router_params=meta.get("params"),
                own_holdout=False,  # the fold's labels already lack what it scores
                artifact_root=ctx.store.root,
            )
            trained = train_prompt_ids(ctx.store, ArtifactRef.of(fold_ref))
            check_fold_disjoint(benchmark, f, heldout_table, trained)
            if members is not None and trained & heldout:
                raise LeakageError(
                    f"leave-group-out {benchmark} fold {f}: the router trained on "
                    f"{len(trained & heldout)} prompts of a held-out group, e.g. "
                    f"{sorted(trained & heldout)[0]}"
                )
            fold_router = load_router(fold_ref, ctx.store)
            scores = strong_win_scores(fold_router, benchmark, heldout_table["prompt"].tolist())
            parts.append(pd.Series(scores, index=heldout_table.index))
            fold_rows.append(
                {
                    "fold": f,
                    "n_scored": int(len(heldout_table)),
                    "groups": ", ".join(sorted(set(heldout_table["group"]))) if "group" in heldout_table else "",
                    "n_train_labels": int(len(fl)),
                    "n_train_prompts": len(trained),
                    "n_benchmark_train_prompts": int(len(trained & set(table["prompt_id"]))),
                    "labels_key": fl_ref["key"],
                    "train_key": fold_ref["key"],
                    "train_fingerprint": fold_ref["fingerprint"],
                }
            )
            log.info(
                "%s %s fold %d/%d: %d scored, router trained on %d prompts",
                benchmark,
                protocol,
                f + 1,
                n_folds,
                len(heldout_table),
                len(trained),
            )

        scores = pd.concat(parts).sort_index()
        # stitched: every prompt scored once, by the fold that held it out
        if len(scores) != len(table) or not scores.index.equals(table.index):
            raise LeakageError(f"cross-fit {benchmark}: stitched {len(scores)} scores for {len(table)} prompts")
        s = mx.summarize(
            scores.to_numpy(),
            table["strong_quality"],
            table["weak_quality"],
            num_results=num_results,
            random_seeds=random_seeds,
            quality_target=quality_target,
            prices=pair_prices(config["prices"], strong, weak),
            quality_floor=QUALITY_FLOOR.get(benchmark, 0.0),
        )
        s["protocol"] = protocol
        scored = scored_table(table, scores.to_numpy(), extra=("fold", "group") if "group" in table else ("fold",))
        entry, row = write_benchmark_outputs(
            ctx, benchmark, scored, s, strong, weak, commercial_points(benchmark, strong, weak)
        )
        entry["folds"] = fold_rows
        ctx.write_table(pd.DataFrame(fold_rows), "folds.parquet")
        report = {
            "protocol": protocol,
            "protocol_description": PROTOCOL_LABELS[protocol],
            "group_column": group_column,
            "router": {
                "key": router_ref.key,
                "fingerprint": router_ref.fingerprint,
                "kind": meta["kind"],
                "params": meta.get("params"),
                "strong_model": strong,
                "weak_model": weak,
            },
            "training_labels": {"key": labels_ref.key, "fingerprint": labels_ref.fingerprint},
            "strong_model": strong,
            "weak_model": weak,
            "folds": n_folds,
            "seed": seed,
            "num_results": num_results,
            "random_seeds": random_seeds,
            "label_quality": f"benchmark quality mapped to [0, 1] from {_QUALITY_RANGE.get(benchmark, (0.0, 1.0))}",
            "quality_unit": QUALITY_UNITS.get(benchmark),
            "benchmarks": {benchmark: entry},
        }
        ctx.write_file("metrics.json", json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode())
        ctx.write_table(pd.DataFrame([row]))
        ctx.stats.update(
            prompts_scored={benchmark: int(len(table))}, folds=n_folds, seconds=round(time.time() - started, 3)
        )
        log.info(
            "%s %s (n=%d, k=%d): APGR %.3f (exact %.3f), random %.3f, oracle %.3f, calls saved at 95%% %s",
            benchmark,
            protocol,
            s["n"],
            n_folds,
            row["apgr"],
            row["apgr_exact"],
            row["random_apgr"],
            row["oracle_apgr"],
            row["calls_saved_at_95_exact"],
        )

    return run_stage(
        STAGE, STAGE_VERSION, compute, inputs={"router": router_ref, "labels": labels_ref}, config=config, store=store
    )
