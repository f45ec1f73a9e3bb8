"""Generate stage: every prompt answered by every configured model.

Output (`answers` table): prompt_id, model, answer, finish_reason, error, input_tokens,
output_tokens, latency_s; one row per input prompt and model, always: a request that
fails after the client's retries keeps its row with `answer` null and `error` saying
why, so nothing is silently dropped and a later stage can tell "wrong" from "missing".

Work is split into parts, one per (shard, model): `plan_generation` lists them,
`generate_part` answers one (an Airflow DAG maps a task over the plan, so workers share
the work), `combine_answers` joins them. `generate_answers` does all three in one call.

Cost control:
- Each part is its own artifact (stage "generate_model"), keyed by the prompts'
  fingerprint, the shard and that endpoint's answer-relevant settings
  (`Endpoint.output_config`). A re-run with the same inputs makes no calls; adding a
  model, or changing one model's settings, asks only that model.
- Every successful reply goes to the request cache (`router_tasks.labeling.request_cache`) as it
  arrives. A part that dies, is retried or aborted, a prompt set with one prompt added,
  or a shard re-planned: the next run re-asks only what has no reply yet.
- If more than `max_failure_rate` of a part's calls fail, it raises instead of
  completing: an artifact of errors (a bad key, a wrong URL) would otherwise be reused
  forever. The replies that succeeded are in the cache. A part with fewer failures is
  stored but marked incomplete (`StageContext.mark_incomplete`): the next run recomputes
  it, asking exactly the rows that have no successful reply and paying for none that did.
  The client's circuit breaker stops a part at once on 401/403/404 or a run of failures.
- A part reads only its shard's file of the prompts artifact, looks replies up only in
  its shard's request-cache partitions, and writes its answers in batches of
  `batch_rows` (a Parquet row group each): memory follows the shard and the batch.
- Each part's manifest records its calls, retries, cached replies, billed tokens and
  dollars (from the endpoint's prices): the run's cost ledger reads them.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from router_tasks.core.endpoints import Endpoint, parse_endpoints
from router_tasks.core.stage import StageContext, part_inputs, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import prompt_shards, read_prompt_shard
from router_tasks.data.quality import enforce, resolve_thresholds
from router_tasks.data.quality_suites import answers_suite
from router_tasks.labeling.ledger import ledger_entry
from router_tasks.labeling.llm_client import ChatResult, EndpointSession, ask_all, endpoint_cache

log = logging.getLogger(__name__)

STAGE = "generate"
MODEL_STAGE = "generate_model"  # one artifact per (shard, model); STAGE combines them
# STAGE_VERSION 4: shard files, batches, PROMPT_VERSION in the key.
# 3: parts per shard x model, replies through the request cache
STAGE_VERSION = "4"
PROMPT_VERSION = "answer-v1"  # how a prompt becomes messages: the user turn, as is (in every key it decides)
BATCH_ROWS = 2000

ANSWERS_SHARD_FILE = "shards/{:05d}.parquet"
ANSWER_COLUMNS = [
    "prompt_id",
    "model",
    "answer",
    "finish_reason",
    "error",
    "input_tokens",
    "output_tokens",
    "latency_s",
]


def _answers_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    for col in ("prompt_id", "model", "answer", "finish_reason", "error"):
        df[col] = df[col].astype("string")
    df["input_tokens"] = df["input_tokens"].astype("int64")
    df["output_tokens"] = df["output_tokens"].astype("int64")
    df["latency_s"] = df["latency_s"].astype("float64")
    return df


def _row(pid: str, model: str, res: ChatResult) -> dict:
    return {
        "prompt_id": pid,
        "model": model,
        "answer": res.answer,
        "finish_reason": res.finish_reason,
        "error": res.error,
        "input_tokens": res.input_tokens,
        "output_tokens": res.output_tokens,
        "latency_s": res.latency_s,
    }


def check_prompts(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("prompt_id", "prompt") if c not in df.columns]
    if missing:
        raise ValueError(f"prompts table lacks column(s) {missing}; has {list(df.columns)}")
    dupes = df["prompt_id"][df["prompt_id"].duplicated()].unique().tolist()
    if dupes:
        raise ValueError(f"prompts table: prompt_id must be unique; repeated: {dupes[:5]}")
    if "shard" not in df.columns:
        df = df.assign(shard=0)
    return df


def answer_prompts(
    df: pd.DataFrame,
    ep: Endpoint,
    *,
    store: ArtifactStore,
    max_failure_rate: float = 1.0,
    flush_every: int = 50,
    label: str = STAGE,
    partition: tuple[int, int] | None = None,
    session: EndpointSession | None = None,
    cache=None,
) -> tuple[pd.DataFrame, dict]:
    """Answers of `ep` to every row of `df` (prompt_id, prompt), through the request cache.

    Returns the answers table and the part's counters (the cost ledger's fields). Raises
    if more than `max_failure_rate` of the calls made fail.
    """
    pids = df["prompt_id"].astype(str).tolist()
    rows: dict[str, dict] = {}
    todo, convs = [], []
    for pid, text in zip(pids, df["prompt"].tolist(), strict=False):
        if not isinstance(text, str) or not text.strip():  # never worth a paid call
            rows[pid] = _row(pid, ep.name, ChatResult(None, None, "empty prompt", 0, 0, 0.0))
            continue
        todo.append(pid)
        convs.append([{"role": "user", "content": text}])
    results, calls = ask_all(
        ep,
        convs,
        store=store,
        prompt_version=PROMPT_VERSION,
        label=label,
        role="model",
        max_failure_rate=max_failure_rate,
        flush_every=flush_every,
        partition=partition,
        session=session,
        cache=cache,
    )
    for pid, res in zip(todo, results, strict=False):
        rows[pid] = _row(pid, ep.name, res)
    ordered = [rows[pid] for pid in pids]
    stats = {
        **calls.to_dict(),
        "failures": sum(r["error"] is not None for r in ordered),
        "failed_calls": calls.failures,
        "truncated": sum(r["finish_reason"] == "length" for r in ordered),
    }
    return _answers_frame(ordered), stats


def sum_stats(total: dict, part: dict) -> dict:
    for k, v in part.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
    return total


def check_failure_rate(stats: dict, *, max_failure_rate: float, label: str, who: str) -> None:
    # Over the rows that need a reply (cached ones included): a re-run that asks only the
    # rows still failing must not count them as 100% of its work.
    if stats.get("requests") and stats.get("failed_calls", 0) / stats["requests"] > max_failure_rate:
        raise RuntimeError(
            f"{label}: {stats['failed_calls']}/{stats['requests']} calls to {who} failed (over "
            f"max_failure_rate={max_failure_rate}); first error: {stats.get('first_error')}. "
            f"Successful replies are cached; fix the endpoint and re-run."
        )


def plan_generation(prompts: dict, *, models: list[dict], artifact_root: str | None = None) -> list[dict]:
    """The parts to generate, one per (shard, model), as kwargs for `generate_part`."""
    endpoints = parse_endpoints(models)
    _, shards = prompt_shards(prompts, ArtifactStore(artifact_root))  # from the manifest: no table read
    return [{"model": m, "shard": shard} for shard in shards or [0] for m, _ in zip(models, endpoints, strict=False)]


def generate_part(
    prompts: dict,
    *,
    model: dict,
    shard: int | None = None,
    max_tokens: int = 128,
    temperature: float = 0.0,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """One model's answers to one shard of `prompts` (all of them if `shard` is None)."""
    ep = parse_endpoints([model], defaults={"max_tokens": max_tokens, "temperature": temperature})[0]
    ep.api_key()  # fail now, naming the missing variable, before any work

    def compute(ctx: StageContext) -> None:
        started = time.monotonic()
        label = f"{STAGE} shard {shard}"
        n_shards, _ = prompt_shards(ctx.inputs["prompts"], ctx.store)
        partition = (n_shards, int(shard)) if shard is not None else None
        df = check_prompts(read_prompt_shard(ctx.inputs["prompts"], shard, ctx.store))
        cache = endpoint_cache(ep, ctx.store, flush_every=flush_every)
        totals: dict = {}

        def batches(session):
            for lo in range(0, max(len(df), 1), max(1, int(batch_rows))):
                table, stats = answer_prompts(
                    df.iloc[lo : lo + batch_rows],
                    ep,
                    store=ctx.store,
                    flush_every=flush_every,
                    label=label,
                    partition=partition,
                    session=session,
                    cache=cache,
                )
                if stats.get("failed_calls") and "first_error" not in totals:
                    totals["first_error"] = next(e for e in table["error"].dropna() if e != "empty prompt")
                sum_stats(totals, stats)
                yield table

        with EndpointSession(ep) as session:
            ctx.write_table_batches(batches(session))
        totals.update(cache_files_read=cache.files_read, cache_bytes_read=cache.bytes_read)
        check_failure_rate(totals, max_failure_rate=max_failure_rate, label=label, who=f"model {ep.name!r}")
        ctx.mark_incomplete(totals.get("failed_calls", 0), "calls failed after retries; asked again on the next run")
        ctx.stats.update({**totals, "model": ep.name, "shard": shard, "seconds": round(time.monotonic() - started, 2)})
        log.info("%s: %s shard %s finished: %s", STAGE, ep.name, shard, ctx.stats)

    return run_stage(
        MODEL_STAGE,
        STAGE_VERSION,
        compute,
        inputs={"prompts": prompts},
        config={"model": ep.output_config(), "shard": shard, "prompt_version": PROMPT_VERSION},
        store=ArtifactStore(artifact_root),
    )


def combine_answers(
    prompts: dict,
    parts: list[dict],
    *,
    models: list[dict],
    artifact_root: str | None = None,
    thresholds: dict | None = None,
) -> dict:
    """One answers table from the parts `generate_part` made; runs the answers suite."""
    endpoints = parse_endpoints(models)
    store = ArtifactStore(artifact_root)
    names = part_inputs(parts, stage="combine_answers")

    def combine(ctx: StageContext) -> None:

        frames, per_part = [], []
        for name in names:
            frames.append(ctx.read_input(name))
            manifest = ctx.input_manifest(name)
            per_part.append(
                {
                    **manifest.get("stats", {}),
                    "artifact": manifest["key"],
                    "reused": bool(names[name].get("reused")),
                    "part_seconds": manifest["seconds"],
                }
            )
        answers = _answers_frame(pd.concat(frames, ignore_index=True))
        want = {ep.name for ep in endpoints}
        got = set(answers["model"].dropna().unique())
        if got - want:
            raise ValueError(
                f"combine_answers: parts hold answers of models {sorted(got - want)} not in the run's models"
            )
        total = check_prompts(ctx.read_input("prompts"))
        expected = len(total) * len(endpoints)
        if len(answers) != expected or answers.duplicated(["prompt_id", "model"]).any():
            raise ValueError(
                f"combine_answers: {len(answers)} answer rows for {len(total)} prompts x "
                f"{len(endpoints)} models (expected {expected}, one per pair): a part is missing or repeated"
            )
        unknown = sorted(set(answers["prompt_id"]) - set(total["prompt_id"]))
        if unknown:
            raise ValueError(
                f"combine_answers: {len(unknown)} prompt_id(s) not in the prompts table, e.g. {unknown[:5]}"
            )
        th = ctx.config["quality"]
        kept = enforce(ctx, answers, answers_suite(th), min_kept_share=th["min_kept_share"])
        ctx.write_table(kept)
        # One file per prompt shard too, so each judge part reads its shard's answers only.
        shard_of = dict(zip(total["prompt_id"], total["shard"], strict=False))
        for s_, part in kept.groupby(kept["prompt_id"].map(shard_of), sort=True):
            ctx.write_table(part.reset_index(drop=True), ANSWERS_SHARD_FILE.format(int(s_)))
        failed = sum(p.get("failed_calls", 0) for p in per_part)
        ctx.mark_incomplete(failed, "parts hold rows whose calls failed; asked again on the next run")
        by_model: dict[str, list[dict]] = {}
        for part in per_part:
            by_model.setdefault(part.get("model", "?"), []).append(part)
        ledger = {m: ledger_entry((p, p["reused"]) for p in ps) for m, ps in by_model.items()}
        per_model = {
            m: {
                **ledger[m]["total"],
                "truncated": sum(p.get("truncated", 0) for p in ps),
                "parts": len(ps),
                "reused": all(p["reused"] for p in ps),
                "artifacts": [p["artifact"] for p in ps],
            }
            for m, ps in by_model.items()
        }
        fresh = [p for p in per_part if not p["reused"]]
        ctx.stats.update(
            {
                "requests": sum(p.get("calls", 0) for p in fresh),  # calls made by this run's parts
                "failures": sum(p.get("failures", 0) for p in per_part),
                "input_tokens": sum(p.get("input_tokens", 0) for p in per_part),
                "output_tokens": sum(p.get("output_tokens", 0) for p in per_part),
                "parts": len(per_part),
                # time spent in the parts this run computed (they ran as tasks of their own)
                "part_seconds": round(sum(p["part_seconds"] for p in fresh), 2),
                "models": per_model,
                "ledger": ledger,
            }
        )

    inputs = {"prompts": prompts, **names}
    return run_stage(
        STAGE,
        STAGE_VERSION,
        combine,
        inputs=inputs,
        config={
            "models": [ep.name for ep in endpoints],
            "quality": resolve_thresholds(thresholds),
            "prompt_version": PROMPT_VERSION,
        },
        store=store,
    )


def generate_answers(
    prompts: dict,
    *,
    models: list[dict],
    max_tokens: int = 128,
    temperature: float = 0.0,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    thresholds: dict | None = None,
) -> dict:
    """Answer every prompt with every model in `models` (endpoint dicts); return the answers ref.

    The plan -> parts -> combine of the DAG, in one process. `max_tokens` / `temperature`
    apply to endpoints that do not set their own.
    """
    endpoints = parse_endpoints(models, defaults={"max_tokens": max_tokens, "temperature": temperature})
    for ep in endpoints:
        ep.api_key()  # fail now, naming the missing variable, before any work
    parts = [
        generate_part(
            prompts,
            **part,
            max_tokens=max_tokens,
            temperature=temperature,
            artifact_root=artifact_root,
            max_failure_rate=max_failure_rate,
            flush_every=flush_every,
        )
        for part in plan_generation(prompts, models=models, artifact_root=artifact_root)
    ]
    return combine_answers(prompts, parts, models=models, artifact_root=artifact_root, thresholds=thresholds)
