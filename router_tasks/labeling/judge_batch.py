"""Batch mode for the judge: the OpenAI Batch API (half price, results within 24 h).

Batch mode only changes *how* verdicts are bought, never what the labels are:

1. `prepare_judge_batch` plans the judge calls exactly as the online judge would (same
   messages, same request-cache keys), leaves out those already cached, writes the rest
   as Batch API JSONL (`custom_id` = the request-cache key) and uploads it. It returns
   the file id, or None when nothing needs asking.
2. Airflow's `OpenAITriggerBatchOperator` (deferrable: the wait costs no worker slot)
   creates the batch and waits for it.
3. `collect_judge_batch` downloads the output and puts every successful reply into the
   request cache under its `custom_id`, and records the cost (Batch API price: 50%).
4. The online judge stage then runs as usual and finds its replies in the cache: the
   labels table is the one the online path makes, and only lines the batch failed on
   are asked online.

Without Airflow the same three steps run with `run_judge_batch` (it polls the batch).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time

from router_tasks.core import defaults
from router_tasks.core.stage import StageContext, load_table, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.labeling.judge import checked_tables, judge_endpoint, plan_rows
from router_tasks.labeling.ledger import ledger_entry
from router_tasks.labeling.llm_client import endpoint_cache, redact_secrets, request_keys
from router_tasks.labeling.rubric import RUBRIC_VERSION
from router_tasks.labeling.verdicts import reply_options, resolve_path, verdict_window

log = logging.getLogger(__name__)

STAGE = "judge_batch"
STAGE_VERSION = "1"
BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_PRICE_FACTOR = 0.5  # the Batch API bills half the online price


def batch_judge(judge: dict | None, judges: list[dict] | None = None) -> dict | None:
    """The one judge whose verdicts a batch buys: `judge`, or the only one of `judges`."""
    if judges:
        if len(judges) > 1:
            raise ValueError(
                f"judge_mode 'batch' buys one judge's verdicts, and {len(judges)} judges are set; "
                f"judge a panel online (judge_mode 'online')"
            )
        return judges[0]
    return judge


def batch_endpoint(judge: dict):
    """The judge's endpoint for the Batch API; refuses what has no Batch API."""
    endpoint = judge_endpoint(judge)
    if endpoint is None:
        raise ValueError("judge batch mode needs a judge endpoint")
    if endpoint.is_local:
        raise ValueError(
            f"judge {endpoint.name!r}: batch mode needs an OpenAI-compatible Batch API, and "
            f"base_url 'local' (the bundled SmolLM2 server) has none; judge it online "
            f"(without --batch) or give the judge an http(s) base_url"
        )
    return endpoint


# A batch that ended this way may still hold replies (paid for): they are collected too.
FINISHED = ("completed", "expired", "cancelled", "failed")


def _client(endpoint):
    import openai

    return openai.OpenAI(
        api_key=endpoint.api_key(),
        base_url=endpoint.base_url,
        timeout=endpoint.request_timeout(),
        max_retries=endpoint.max_retries,
    )


def batch_lines(prompts: dict, answers: dict, *, judge: dict, artifact_root: str | None = None) -> list[dict]:
    """The Batch API request lines for every judge call not yet in the request cache."""
    endpoint = batch_endpoint(judge)
    store = ArtifactStore(artifact_root)
    pdf, adf = checked_tables(load_table(prompts, store), load_table(answers, store))
    _, pending, _ = plan_rows(pdf, adf, True)
    # the online judge's first request exactly (log-probabilities asked where its path reads them)
    options = reply_options(resolve_path(endpoint.verdict, endpoint.is_local)) or {}
    sent, keys = request_keys(endpoint, [conv for _, conv in pending], prompt_version=RUBRIC_VERSION, options=options)
    cache = endpoint_cache(endpoint, store)
    lines, seen = [], set()
    for messages, key in zip(sent, keys, strict=False):
        if key in seen or cache.get(key) is not None:
            continue
        seen.add(key)
        lines.append(
            {
                "custom_id": key,
                "method": "POST",
                "url": BATCH_ENDPOINT,
                "body": {
                    "model": endpoint.model,
                    "messages": messages,
                    "max_tokens": endpoint.max_tokens,
                    "temperature": endpoint.temperature,
                    **options,
                },
            }
        )
    return lines


def _token_logprobs(choice: dict) -> list | None:
    """A batch output line's per-token log-probabilities, in `ChatResult.logprobs`'s form."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    return [
        {
            "token": t["token"],
            "logprob": float(t["logprob"]),
            "top": [[a["token"], float(a["logprob"])] for a in t.get("top_logprobs") or []],
        }
        for t in content
    ]


def prepare_judge_batch(
    prompts: dict,
    answers: dict,
    *,
    judge: dict | None,
    judges: list[dict] | None = None,
    artifact_root: str | None = None,
) -> str | None:
    """Upload the judge calls still needed as a Batch API input file; its id, or None."""
    judge = batch_judge(judge, judges)
    lines = batch_lines(prompts, answers, judge=judge, artifact_root=artifact_root)
    if not lines:
        log.info("%s: every judge call is already cached; no batch needed", STAGE)
        return None
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    endpoint = batch_endpoint(judge)
    with _client(endpoint) as client:
        uploaded = client.files.create(file=("tela-judge-batch.jsonl", io.BytesIO(data)), purpose="batch")
    log.info("%s: uploaded %d judge requests as %s", STAGE, len(lines), uploaded.id)
    return uploaded.id


def collect_judge_batch(
    batch_id: str, *, judge: dict | None, judges: list[dict] | None = None, artifact_root: str | None = None
) -> dict:
    """Put a finished batch's replies into the request cache; an artifact with its costs.

    An expired, cancelled or failed batch keeps the replies it did produce (they were paid
    for): they are cached like a completed batch's, and the online judge that follows asks
    only the rest."""
    endpoint = batch_endpoint(batch_judge(judge, judges))
    store = ArtifactStore(artifact_root)

    def compute(ctx: StageContext) -> None:
        with _client(endpoint) as client:
            batch = client.batches.retrieve(batch_id)
            if batch.status not in FINISHED:
                raise RuntimeError(
                    f"{STAGE}: batch {batch_id} is {batch.status!r}, not 'completed' (nor ended with replies to keep); "
                    f"errors: {getattr(batch, 'errors', None)}"
                )
            if batch.status != "completed":
                log.warning(
                    "%s: batch %s ended %r; keeping the replies it produced, the rest are asked online",
                    STAGE,
                    batch_id,
                    batch.status,
                )
            output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
            error_text = client.files.content(batch.error_file_id).text if batch.error_file_id else ""
        cache = endpoint_cache(endpoint, ctx.store, flush_every=10_000)
        ok = failed = tokens_in = tokens_out = 0
        reasons: dict[str, int] = {}
        for n, raw in enumerate(line for line in (output + "\n" + error_text).splitlines() if line.strip()):
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ValueError(f"{STAGE}: batch {batch_id} output line {n + 1} is not JSON: {err}") from None
            response = item.get("response") or {}
            body = response.get("body") or {}
            choices = body.get("choices") or []
            content = (choices[0].get("message") or {}).get("content") if choices else None
            if response.get("status_code") != 200 or content is None:
                failed += 1
                why = redact_secrets(
                    (item.get("error") or {}).get("message")
                    or ((body.get("error") or {}).get("message") if isinstance(body, dict) else None)
                    or f"status {response.get('status_code')}"
                )
                reasons[why[:120]] = reasons.get(why[:120], 0) + 1
                continue
            usage = body.get("usage") or {}
            cache.put(
                item["custom_id"],
                answer=content,
                finish_reason=choices[0].get("finish_reason"),
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
                logprobs=verdict_window(_token_logprobs(choices[0])),
            )
            ok += 1
            tokens_in += int(usage.get("prompt_tokens") or 0)
            tokens_out += int(usage.get("completion_tokens") or 0)
        cache.flush()
        summary = {
            "batch_id": batch_id,
            "status": batch.status,
            "replies": ok,
            "failed": failed,
            "failure_reasons": reasons,
        }
        ctx.write_file("batch.json", json.dumps(summary, indent=2).encode())
        calls = {
            "requests": ok + failed,
            "cached": 0,
            "calls": ok + failed,
            "attempts": ok + failed,
            "retries": 0,
            "failures": failed,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "dollars": round(endpoint.dollars(tokens_in, tokens_out, factor=BATCH_PRICE_FACTOR), 6),
        }
        ctx.stats.update(
            {
                **calls,
                "model": endpoint.name,
                "batch_id": batch_id,
                "ledger": {endpoint.name: ledger_entry([(calls, False)])},
            }
        )
        log.info("%s: batch %s: %d replies cached, %d failed", STAGE, batch_id, ok, failed)

    return run_stage(
        STAGE, STAGE_VERSION, compute, config={"batch_id": batch_id, "judge": endpoint.output_config()}, store=store
    )


def run_judge_batch(
    prompts: dict,
    answers: dict,
    *,
    judge: dict | None,
    judges: list[dict] | None = None,
    artifact_root: str | None = None,
    poll_seconds: float | None = None,
    timeout_s: float = 24 * 3600,
) -> dict | None:
    """prepare -> create batch -> wait -> collect, without Airflow. None if nothing to ask.

    Polls every `poll_seconds` (default: env TELA_BATCH_POLL_SECONDS, else 60 s)."""
    if poll_seconds is None:
        poll_seconds = float(os.environ.get("TELA_BATCH_POLL_SECONDS", defaults.BATCH_POLL_SECONDS))
    judge = batch_judge(judge, judges)
    file_id = prepare_judge_batch(prompts, answers, judge=judge, artifact_root=artifact_root)
    if file_id is None:
        return None
    endpoint = batch_endpoint(judge)
    with _client(endpoint) as client:
        batch = client.batches.create(input_file_id=file_id, endpoint=BATCH_ENDPOINT, completion_window="24h")
        deadline = time.monotonic() + timeout_s
        while batch.status not in FINISHED:
            if time.monotonic() > deadline:
                client.batches.cancel(batch.id)
                raise TimeoutError(f"{STAGE}: batch {batch.id} not done after {timeout_s} s; cancelled")
            time.sleep(poll_seconds)
            batch = client.batches.retrieve(batch.id)
    return collect_judge_batch(batch.id, judge=judge, artifact_root=artifact_root)
