"""Cost ledger: what a run's LLM calls cost, per stage and model, from the stages' manifests.

One row per (stage, model): rows that needed a reply, how many the request cache served,
calls made, retries (extra HTTP attempts), failures, billed input/output tokens and
dollars (from each endpoint's `price_input_per_m` / `price_output_per_m`; the Batch API's
50% discount applied to batch rows). Two views:

- `*_now` columns: what *this run* spent. A reused artifact, a cached reply: zero.
- the plain columns: what the artifact cost when it was computed (whichever run did it).

Written as an artifact (`ledger.parquet` + `ledger.md`) keyed by the stage artifacts and
whether this run computed or reused them; the run summary prints it.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from router_tasks.core.stage import ArtifactRef, StageContext, read_manifest, run_stage
from router_tasks.core.store import ArtifactStore

STAGE = "ledger"
STAGE_VERSION = "1"
# A part's call counters (llm_client.CallStats.to_dict()), summed into ledger entries.
LEDGER_FIELDS = (
    "requests",
    "cached",
    "calls",
    "attempts",
    "retries",
    "failures",
    "input_tokens",
    "output_tokens",
    "dollars",
)
NOW_FIELDS = ("calls", "retries", "input_tokens", "output_tokens", "dollars")
COLUMNS = ["stage", "model", *LEDGER_FIELDS, *(f"{k}_now" for k in NOW_FIELDS), "artifact", "reused"]


def ledger_entry(parts: Iterable[tuple[dict, bool]]) -> dict:
    """One model's entry in a stage's `stats["ledger"]`, from its parts' counters:
    `total` over every part, `now` over the parts computed (not reused) by this run.

    Every stage that calls models stores `stats["ledger"] = {model: ledger_entry(...)}`;
    the ledger reads only that, whatever the stage."""
    total, now = dict.fromkeys(LEDGER_FIELDS, 0), dict.fromkeys(LEDGER_FIELDS, 0)
    for stats, reused in parts:
        for k in LEDGER_FIELDS:
            total[k] += stats.get(k, 0)
            if not reused:
                now[k] += stats.get(k, 0)
    return {"total": total, "now": now}


def ledger_rows(stages: dict, store: ArtifactStore) -> list[dict]:
    rows = []
    for name, ref in stages.items():
        ref = ArtifactRef.of(ref)
        entries = read_manifest(store, ref).get("stats", {}).get("ledger") or {}
        for model, entry in sorted(entries.items()):
            now = {} if ref.reused else entry["now"]  # a reused artifact cost this run nothing
            row = {"stage": name, "model": model, "artifact": ref.key, "reused": ref.reused}
            row.update({k: entry["total"].get(k, 0) for k in LEDGER_FIELDS})
            row.update({f"{k}_now": now.get(k, 0) for k in NOW_FIELDS})
            rows.append(row)
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in COLUMNS:
        if col in ("stage", "model", "artifact"):
            df[col] = df[col].astype("string")
        elif col == "reused":
            df[col] = df[col].astype("bool")
        elif col.startswith("dollars"):
            df[col] = df[col].astype("float64").round(6)
        else:
            df[col] = df[col].astype("int64")
    return df


def ledger_markdown(df: pd.DataFrame) -> str:
    lines = [
        (
            "| stage | model | rows | cached | calls | retries | failures | tokens in | tokens out | "
            "$ (computed) | calls now | $ now |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples(index=False):
        lines.append(
            f"| {r.stage} | {r.model} | {r.requests} | {r.cached} | {r.calls} | {r.retries} | {r.failures} | "
            f"{r.input_tokens:,} | {r.output_tokens:,} | {r.dollars:.4f} | {r.calls_now} | {r.dollars_now:.4f} |"
        )
    if len(df):
        lines.append(
            f"| **total** | | {df.requests.sum()} | {df.cached.sum()} | {df.calls.sum()} | {df.retries.sum()} | "
            f"{df.failures.sum()} | {df.input_tokens.sum():,} | {df.output_tokens.sum():,} | "
            f"{df.dollars.sum():.4f} | {df.calls_now.sum()} | {df.dollars_now.sum():.4f} |"
        )
    return "\n".join(lines) + "\n"


def cost_ledger(stages: dict, *, artifact_root: str | None = None) -> dict:
    """The run's cost ledger artifact from its stage refs (name -> ref, None skipped)."""
    store = ArtifactStore(artifact_root)
    stages = {k: v for k, v in stages.items() if v is not None}

    def compute(ctx: StageContext) -> None:
        df = _frame(ledger_rows(stages, ctx.store))
        ctx.write_table(df)
        ctx.write_file("ledger.md", ledger_markdown(df).encode())
        ctx.stats.update(
            {
                "calls_now": int(df["calls_now"].sum()),
                "dollars_now": float(df["dollars_now"].sum()),
                "dollars": float(df["dollars"].sum()),
            }
        )

    # Reuse depends on the run (a reused stage spent nothing now): part of the key.
    config = {name: [ArtifactRef.of(ref).key, bool(ArtifactRef.of(ref).reused)] for name, ref in stages.items()}
    return run_stage(STAGE, STAGE_VERSION, compute, config=config, store=store)
