"""Generate stage: every prompt answered by every configured model.

Output (`answers` table): prompt_id, model, answer, finish_reason, error, input_tokens,
output_tokens, latency_s; one row per input prompt and model, always: a request that
fails after the client's retries keeps its row with `answer` null and `error` saying
why, so nothing is silently dropped and a later stage can tell "wrong" from "missing".

Cost control:
- Each model's answers are their own artifact (stage "generate_model"), keyed by the
  prompts' fingerprint and that endpoint's answer-relevant settings
  (`Endpoint.output_config`); the "generate" artifact combines them. A re-run with the
  same inputs makes no calls; adding a model, or changing one model's settings, asks
  only that model.
- While a run is going, finished answers are checkpointed under the artifact's folder
  (`_partial/`, not part of the manifest). If a run dies, or is aborted because too many
  calls failed, the next run with the same inputs and config re-asks only the rows that
  have no answer yet.
- If more than `max_failure_rate` of a model's calls fail, the stage raises instead of
  completing: an artifact of errors (a bad key, a wrong URL) would otherwise be reused
  forever. Rows that already succeeded are kept in the checkpoint.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from router_tasks.llm_client import ChatResult, Endpoint, Progress, chat_many, open_endpoint
from router_tasks.quality import resolve_thresholds
from router_tasks.stage import StageContext, run_stage
from router_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "generate"
MODEL_STAGE = "generate_model"  # one artifact per model; STAGE combines them
STAGE_VERSION = "2"  # 2: answers validated by the answers suite

ANSWER_COLUMNS = ["prompt_id", "model", "answer", "finish_reason", "error", "input_tokens", "output_tokens", "latency_s"]


def parse_endpoints(models: list[dict], *, defaults: dict | None = None, where: str = "models") -> list[Endpoint]:
    if not isinstance(models, (list, tuple)) or not models:
        raise ValueError(f"{where}: expected a non-empty list of endpoint dicts")
    endpoints = [Endpoint.from_dict(m, defaults=defaults, where=f"{where}[{i}]") for i, m in enumerate(models)]
    names = [e.name for e in endpoints]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: model names must be unique; repeated: {dupes}")
    return endpoints


def _read_partial(ctx: StageContext) -> dict[str, dict]:
    """Successful answers a previous attempt checkpointed, by prompt_id."""
    df = ctx.read_checkpoint("answers")
    if df is None:
        return {}
    df = df[df["error"].isna() & df["answer"].notna()]
    rows = df.astype(object).where(df.notna(), None).to_dict("records")  # NA -> None
    return {r["prompt_id"]: r for r in rows}


def _write_partial(ctx: StageContext, rows: list[dict]) -> None:
    ctx.write_checkpoint("answers", _answers_frame(rows))


def _answers_frame(rows: "list[dict] | pd.DataFrame") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    for col in ("prompt_id", "model", "answer", "finish_reason", "error"):
        df[col] = df[col].astype("string")
    df["input_tokens"] = df["input_tokens"].astype("int64")
    df["output_tokens"] = df["output_tokens"].astype("int64")
    df["latency_s"] = df["latency_s"].astype("float64")
    return df


def _row(pid: str, model: str, res: ChatResult) -> dict:
    return {
        "prompt_id": pid, "model": model, "answer": res.answer, "finish_reason": res.finish_reason,
        "error": res.error, "input_tokens": res.input_tokens, "output_tokens": res.output_tokens,
        "latency_s": res.latency_s,
    }


def _load_prompts(ctx: StageContext) -> pd.DataFrame:
    df = ctx.read_input("prompts")
    missing = [c for c in ("prompt_id", "prompt") if c not in df.columns]
    if missing:
        raise ValueError(f"prompts table lacks column(s) {missing}; has {list(df.columns)}")
    dupes = df["prompt_id"][df["prompt_id"].duplicated()].unique().tolist()
    if dupes:
        raise ValueError(f"prompts table: prompt_id must be unique; repeated: {dupes[:5]}")
    return df


def _answer_one_model(ctx: StageContext, ep: Endpoint, *, max_failure_rate: float, checkpoint_every: int) -> None:
    """compute() of one model's sub-artifact: ask for every prompt not yet answered."""
    started = time.monotonic()
    df = _load_prompts(ctx)
    pids = df["prompt_id"].astype(str).tolist()
    have = _read_partial(ctx)
    rows: dict[str, dict] = dict(have)
    todo, convs = [], []
    for pid, text in zip(pids, df["prompt"].tolist()):
        if pid in have:
            continue
        if not isinstance(text, str) or not text.strip():  # never worth a paid call
            rows[pid] = _row(pid, ep.name, ChatResult(None, None, "empty prompt", 0, 0, 0.0))
            continue
        todo.append(pid)
        convs.append([{"role": "user", "content": text}])
    if have:
        log.info("%s: %s: %d answers from a previous attempt's checkpoint", STAGE, ep.name, len(have))
    progress = Progress(f"{STAGE} {ep.name}", len(todo))
    since_ckpt = 0

    def on_result(i: int, res: ChatResult) -> None:
        nonlocal since_ckpt
        rows[todo[i]] = _row(todo[i], ep.name, res)
        progress.update(res)
        since_ckpt += 1
        if since_ckpt >= checkpoint_every:
            since_ckpt = 0
            _write_partial(ctx, list(rows.values()))

    requests = 0
    if todo:
        log.info("%s: asking %s (%s) for %d answers", STAGE, ep.name, ep.public_dict()["base_url"], len(todo))
        with open_endpoint(ep) as client:
            try:
                chat_many(client, convs, on_result=on_result)
            finally:
                requests = client.requests
                _write_partial(ctx, list(rows.values()))
    new_failures = sum(rows[p]["error"] is not None for p in todo)
    if todo and new_failures / len(todo) > max_failure_rate:
        first = next(rows[p]["error"] for p in todo if rows[p]["error"] is not None)
        raise RuntimeError(
            f"{STAGE}: {new_failures}/{len(todo)} calls to model {ep.name!r} failed "
            f"(over max_failure_rate={max_failure_rate}); first error: {first}. "
            f"Successful answers are checkpointed; fix the endpoint and re-run."
        )
    ordered = [rows[pid] for pid in pids]
    ctx.write_table(_answers_frame(ordered))
    ctx.stats.update({
        "requests": requests,
        "failures": sum(r["error"] is not None for r in ordered),
        "reused_from_checkpoint": len(have),
        "input_tokens": int(sum(r["input_tokens"] for r in ordered)),
        "output_tokens": int(sum(r["output_tokens"] for r in ordered)),
        "truncated": sum(r["finish_reason"] == "length" for r in ordered),
        "seconds": round(time.monotonic() - started, 2),
    })
    log.info("%s: %s finished: %s", STAGE, ep.name, ctx.stats)
    ctx.clear_checkpoint("answers")  # the table now holds everything the checkpoint did


def generate_answers(
    prompts: dict,
    *,
    models: list[dict],
    max_tokens: int = 128,
    temperature: float = 0.0,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    checkpoint_every: int = 50,
    thresholds: dict | None = None,
) -> dict:
    """Answer every prompt with every model in `models` (endpoint dicts); return the answers ref.

    `max_tokens` / `temperature` apply to endpoints that do not set their own. Each model's
    answers are their own artifact (stage "generate_model"), combined into the "generate"
    artifact: adding a model or changing one model's settings re-asks that model only.
    """
    endpoints = parse_endpoints(models, defaults={"max_tokens": max_tokens, "temperature": temperature})
    for ep in endpoints:
        ep.api_key()  # fail now, naming the missing variable, before any work
    store = ArtifactStore(artifact_root)

    parts: dict[str, dict] = {}
    for ep in endpoints:
        parts[ep.name] = run_stage(
            MODEL_STAGE, STAGE_VERSION,
            lambda ctx, ep=ep: _answer_one_model(ctx, ep, max_failure_rate=max_failure_rate,
                                                 checkpoint_every=checkpoint_every),
            inputs={"prompts": prompts}, config={"model": ep.output_config()}, store=store,
        )

    def combine(ctx: StageContext) -> None:
        frames, per_model = [], {}
        for ep in endpoints:
            frames.append(ctx.read_input(f"model:{ep.name}"))
            manifest = ctx.input_manifest(f"model:{ep.name}")
            per_model[ep.name] = {**manifest.get("stats", {}), "artifact": manifest["key"],
                                  "reused": bool(parts[ep.name]["reused"])}
        from router_tasks.quality import answers_suite, enforce

        answers = _answers_frame(pd.concat(frames, ignore_index=True))
        th = ctx.config["quality"]
        ctx.write_table(enforce(ctx, answers, answers_suite(th), min_kept_share=th["min_kept_share"]))
        fresh = [s for s in per_model.values() if not s["reused"]]
        ctx.stats.update({
            "requests": sum(s.get("requests", 0) for s in fresh),  # made by this run
            "failures": sum(s.get("failures", 0) for s in per_model.values()),
            "input_tokens": sum(s.get("input_tokens", 0) for s in per_model.values()),
            "output_tokens": sum(s.get("output_tokens", 0) for s in per_model.values()),
            "models": per_model,
        })

    inputs = {"prompts": prompts, **{f"model:{name}": ref for name, ref in parts.items()}}
    return run_stage(STAGE, STAGE_VERSION, combine, inputs=inputs,
                     config={"models": [ep.name for ep in endpoints], "quality": resolve_thresholds(thresholds)},
                     store=store)
