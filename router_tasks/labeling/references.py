"""References stage: where a prompt has neither a gold answer nor a reference answer, the
strong model (configurable) writes the reference the LLM judge grades against.

Output: the prompts table, with `reference_answer` filled where it was missing and a
`reference_source` column: "data" (the dataset's own), the reference endpoint's name
(generated here) or null (none: a gold answer grades the row, or the call failed; the
judge then records "no reference" for it rather than guessing).

Nothing to fill, or no reference endpoint configured: the input artifact is handed on
as it is (no new artifact, no call). Replies go through the request cache like every
other call, so a re-run, or the same prompt in a later dataset, is not paid twice.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from router_tasks.core.endpoints import parse_endpoints
from router_tasks.core.schemas import cell_text
from router_tasks.core.stage import StageContext, load_table, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import SHARD_FILE, prompt_shards
from router_tasks.labeling.generate import answer_prompts, check_failure_rate, sum_stats
from router_tasks.labeling.ledger import ledger_entry
from router_tasks.labeling.llm_client import EndpointSession, endpoint_cache

log = logging.getLogger(__name__)

STAGE = "references"
STAGE_VERSION = "2"  # 2: per-shard files and cache partitions

# The strong model answers the prompt as a careful expert would: this is the standard
# cheaper models are graded against, so we ask for completeness over brevity.
REFERENCE_SYSTEM = (
    "You are an expert assistant writing a model answer that other answers will be graded against. "
    "Answer correctly and completely; show the key steps for problems that need them."
)


def _needs_reference(df: pd.DataFrame) -> pd.Series:
    def missing(col: str) -> pd.Series:
        if col not in df.columns:
            return pd.Series(True, index=df.index)
        return df[col].map(lambda v: cell_text(v) is None)

    return missing("gold_answer") & missing("reference_answer")


def generate_references(
    prompts: dict,
    *,
    reference: dict | None = None,
    max_tokens: int = 512,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
) -> dict:
    """The prompts artifact with missing references written by `reference` (an endpoint dict)."""
    if not reference:
        return prompts
    ep = parse_endpoints(
        [reference],
        defaults={"max_tokens": max_tokens, "temperature": 0.0, "system_prompt": REFERENCE_SYSTEM},
        where="reference",
    )[0]
    store = ArtifactStore(artifact_root)
    need = _needs_reference(load_table(prompts, store))
    if not need.any():
        log.info("%s: every prompt has a gold or reference answer; nothing to generate", STAGE)
        return prompts
    ep.api_key()

    def compute(ctx: StageContext) -> None:
        started = time.monotonic()
        df = ctx.read_input("prompts").copy()
        todo = _needs_reference(df)
        if "reference_answer" not in df.columns:
            df["reference_answer"] = None
        source = pd.Series(None, index=df.index, dtype="object")
        source[df["reference_answer"].map(lambda v: cell_text(v) is not None)] = "data"
        # Asked shard by shard, so each reply lands in its shard's request-cache partition:
        # the reference endpoint is often a generate endpoint too, whose parts then read
        # only their own shard's references, not all of them.
        n_shards, _ = prompt_shards(ctx.inputs["prompts"], ctx.store)
        shard_col = df["shard"] if "shard" in df.columns else pd.Series(0, index=df.index)
        cache = endpoint_cache(ep, ctx.store)
        frames, stats = [], {}
        with EndpointSession(ep) as session:
            for shard, idx in df[todo].groupby(shard_col[todo], sort=True).groups.items():
                part, st = answer_prompts(
                    df.loc[idx, ["prompt_id", "prompt"]],
                    ep,
                    store=ctx.store,
                    label=STAGE,
                    partition=(n_shards, int(shard)) if "shard" in df.columns else None,
                    session=session,
                    cache=cache,
                )
                frames.append(part)
                sum_stats(stats, st)
        answers = pd.concat(frames, ignore_index=True)  # todo is never empty here (see `need` above)
        check_failure_rate(stats, max_failure_rate=max_failure_rate, label=STAGE, who=f"reference {ep.name!r}")
        written = answers.set_index("prompt_id")["answer"]
        ok = written.notna() & answers.set_index("prompt_id")["finish_reason"].fillna("").ne("length")
        # A reference cut off by max_tokens is no standard to grade against: left out.
        fill = df["prompt_id"].map(written.where(ok))
        mask = todo & fill.notna()
        df.loc[mask, "reference_answer"] = fill[mask]
        source[mask] = ep.name
        df["reference_answer"] = df["reference_answer"].astype("string")
        df["reference_source"] = source.astype("string")
        ctx.write_table(df)
        if "shard" in df.columns:  # keep one file per shard, as ingest made them
            for shard, part in df.groupby("shard", sort=True):
                ctx.write_table(part.reset_index(drop=True), SHARD_FILE.format(int(shard)))
        ctx.mark_incomplete(stats.get("failed_calls", 0), "reference calls failed; asked again on the next run")
        ctx.stats.update(
            {
                **stats,
                "shards": n_shards,
                "model": ep.name,
                "ledger": {ep.name: ledger_entry([(stats, False)])},
                "needed": int(todo.sum()),
                "written": int(mask.sum()),
                "cut_off": int((written.notna() & ~ok).sum()),
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        log.info("%s: %s", STAGE, ctx.stats)

    return run_stage(
        STAGE,
        STAGE_VERSION,
        compute,
        inputs={"prompts": prompts},
        config={"reference": ep.output_config(), "system": REFERENCE_SYSTEM},
        store=store,
    )
