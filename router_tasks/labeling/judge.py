"""Judge stage: grade every answer, by exact match where a gold answer exists, else by an LLM.

Output (`judgements` table): prompt_id, model, method ("exact_match" | "llm_judge"),
score (Int64 1-5 or null), correct (boolean or null), judge_model, judge_raw,
failure_reason, rubric_version, and for LLM verdicts score_expected (the mean of the
verdict's distribution), score_probs (JSON [P(1)..P(5)], where read from log-probabilities),
verdict_method ("logprobs" | "continuation" | "text"), judge_votes (JSON {judge: score}) and
judge_disagreement (share of judges off the vote) with several judges; one row per answer
row, always.

- gold_type "number" (GSM8K): the answer's final number (after the last "####", else
  the last \\boxed{}, else the last number in the text; commas, "$" and "%" ignored) is
  compared numerically with the gold. gold_type "letter" (MMLU): the letter A-D the
  answer chooses. `correct` is set, `score` stays null; `judge_raw` holds the value read
  from the answer (null if none was found, which counts as incorrect).
- Otherwise, with a reference_answer: a reference-guided 1-5 LLM judge with our own
  rubric (`rubric.RUBRIC_TEXT`, versioned by RUBRIC_VERSION, stored on each row), ending in [[n]].
  Where the judge's endpoint returns log-probabilities the verdict is read from those of
  `1`..`5` after `[[` (`router_tasks.labeling.verdicts`: our local server and vLLM-style
  endpoints always give one); otherwise from the text, and a reply without [[n]] keeps its
  text in judge_raw with failure_reason "no [[n]] verdict" and no score: a guessed score
  would poison labels.
- Several judges (`judges`, a list of endpoints) are each asked every answer and their
  verdicts voted (`vote`: "majority" or "mean", `router_tasks.labeling.panel`); `judge`
  alone is the default.
- Judge calls that still fail after the client's retries keep their row with
  failure_reason "judge error: ..."; if more than `max_failure_rate` of them fail, the
  stage raises instead (a broken judge must not become a reused artifact). Every reply
  goes to the request cache as it arrives, so a re-run after a crash or an abort, or a
  run whose answers changed for one model, asks the judge only for what it has not
  answered yet. Batch mode (`router_tasks.labeling.judge_batch`) fills the same cache through the
  OpenAI Batch API, so both modes produce the same table.
- Work is split by prompt shard (`plan_judging` -> `judge_part` -> `combine_judgements`);
  `judge_answers` runs all three.
- No answer (generation error): failure_reason "no answer". Neither gold nor reference:
  failure_reason "no reference" (references come from a later stage).
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack

import pandas as pd

from router_tasks.core.endpoints import Endpoint, parse_endpoints
from router_tasks.core.schemas import cell_text
from router_tasks.core.stage import StageContext, part_inputs, run_stage, stable_hash
from router_tasks.core.store import ArtifactStore
from router_tasks.data.ingest import prompt_shards, read_prompt_shard
from router_tasks.data.quality import enforce, resolve_thresholds
from router_tasks.data.quality_suites import judgements_suite
from router_tasks.labeling.exact_match import (  # noqa: F401 (re-exported)
    LETTERS,
    extract_letter,
    extract_number,
    grade_exact,
    normalize_number,
    numbers_equal,
)
from router_tasks.labeling.generate import ANSWERS_SHARD_FILE, BATCH_ROWS, check_failure_rate, check_prompts, sum_stats
from router_tasks.labeling.ledger import LEDGER_FIELDS, ledger_entry
from router_tasks.labeling.llm_client import EndpointSession, endpoint_cache
from router_tasks.labeling.panel import READER_VERSION, Judged, ask_panel, panel_name, total_stats
from router_tasks.labeling.rubric import RUBRIC_SYSTEM, RUBRIC_TEXT, RUBRIC_VERSION, judge_messages
from router_tasks.labeling.verdicts import VOTES, parse_verdict, resolve_path  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

STAGE = "judge"
PART_STAGE = "judge_part"  # one artifact per shard; STAGE combines them
# Bump when grading logic (extraction, parsing) changes: old artifacts go stale.
# 5: verdicts from log-probabilities, several judges. 4: shard files, batches, failed
# verdicts re-asked. 3: parts per shard, verdicts through the request cache. 2: judgements suite.
STAGE_VERSION = "5"

JUDGEMENT_COLUMNS = [
    "prompt_id",
    "model",
    "method",
    "score",
    "correct",
    "judge_model",
    "judge_raw",
    "failure_reason",
    "rubric_version",
    "score_expected",
    "score_probs",
    "verdict_method",
    "judge_votes",
    "judge_disagreement",
]
_TEXT_COLUMNS = (
    "prompt_id",
    "model",
    "method",
    "judge_model",
    "judge_raw",
    "failure_reason",
    "rubric_version",
    "score_probs",
    "verdict_method",
    "judge_votes",
)

# --------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------


def _judgement(
    pid, model, method, *, score=None, correct=None, judge_model=None, raw=None, failure=None, rubric=None, **verdict
) -> dict:
    return {
        "prompt_id": pid,
        "model": model,
        "method": method,
        "score": score,
        "correct": correct,
        "judge_model": judge_model,
        "judge_raw": raw,
        "failure_reason": failure,
        "rubric_version": rubric,
        **verdict,
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=JUDGEMENT_COLUMNS)
    for col in _TEXT_COLUMNS:
        df[col] = df[col].astype("string")
    df["score"] = df["score"].astype("Int64")
    df["correct"] = df["correct"].astype("boolean")
    for col in ("score_expected", "judge_disagreement"):
        df[col] = df[col].astype("Float64")
    return df


def judge_endpoints(judge: dict | None, judges: list[dict] | None = None) -> list[Endpoint]:
    """The judges from config: `judges` (a list of endpoint dicts) when given and not empty,
    else `judge` alone; [] for none. Fails early on bad config or a missing key."""
    if judges is not None and not isinstance(judges, (list, tuple)):
        raise ValueError(f"judges: expected a list of endpoint dicts, got {type(judges).__name__}")
    configs = list(judges) if judges else ([judge] if judge is not None else [])
    if not configs:
        return []
    endpoints = parse_endpoints(
        configs, defaults={"max_tokens": 256, "temperature": 0.0}, where="judges" if judges else "judge"
    )
    for endpoint in endpoints:
        endpoint.api_key()
    return endpoints


def judge_endpoint(judge: dict | None) -> Endpoint | None:
    """The one judge's endpoint from config (None: no LLM judge); fails early on a missing key."""
    endpoints = judge_endpoints(judge)
    return endpoints[0] if endpoints else None


def check_vote(vote: str) -> str:
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {list(VOTES)}, got {vote!r}")
    return vote


def judge_config(endpoints: list[Endpoint], vote: str) -> dict:

    return {
        "judges": [{**e.output_config(), "verdict": resolve_path(e.verdict, e.is_local)} for e in endpoints] or None,
        "vote": vote if len(endpoints) > 1 else None,
        "verdict_reader": READER_VERSION,
        "rubric_version": RUBRIC_VERSION,
        # The exact texts: an edit without a version bump still gets a new artifact.
        "rubric_hash": stable_hash([RUBRIC_SYSTEM, RUBRIC_TEXT]),
    }


def checked_tables(pdf: pd.DataFrame, adf: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    pdf = check_prompts(pdf)  # columns, unique ids, a shard column
    missing = [c for c in ("prompt_id", "model", "answer", "error") if c not in adf.columns]
    if missing:
        raise ValueError(f"answers table lacks column(s) {missing}; has {list(adf.columns)}")
    pdf = pdf.copy()
    for col in ("gold_answer", "gold_type", "reference_answer"):
        if col not in pdf.columns:
            pdf[col] = None
    unknown = sorted(set(adf["prompt_id"]) - set(pdf["prompt_id"]))
    if unknown:
        raise ValueError(f"answers table has {len(unknown)} prompt_id(s) not in the prompts table, e.g. {unknown[:5]}")
    return pdf, adf


def plan_rows(pdf: pd.DataFrame, adf: pd.DataFrame, has_judge: bool):
    """Every answer row's judgement where no judge call is needed, and the judge calls.

    Returns (rows, pending, counts): `rows[i]` is the judgement of answer row i, or None
    where `pending` holds (i, judge conversation) for it.
    """
    by_id = pdf.set_index("prompt_id")
    rows: list[dict | None] = []
    pending: list[tuple[int, list[dict]]] = []
    counts = {"exact_match": 0, "llm_judge": 0, "no_answer": 0, "no_reference": 0, "no_judge": 0, "bad_gold": 0}
    for a in adf.itertuples(index=False):
        p = by_id.loc[a.prompt_id]
        gold, gold_type = cell_text(p["gold_answer"]), cell_text(p["gold_type"])
        method = "exact_match" if gold and gold_type else "llm_judge"
        # An empty string is an answer (a bad one); null or an error is none at all.
        answer = a.answer if isinstance(a.answer, str) else None
        if cell_text(a.error) is not None or answer is None:
            counts["no_answer"] += 1
            rows.append(_judgement(a.prompt_id, a.model, method, failure="no answer"))
            continue
        if method == "exact_match":
            correct, raw, failure = grade_exact(answer, gold, gold_type, cell_text(p["prompt"]))
            counts["exact_match" if failure is None else "bad_gold"] += 1
            rows.append(_judgement(a.prompt_id, a.model, method, correct=correct, raw=raw, failure=failure))
            continue
        if cell_text(p["reference_answer"]) is None:
            counts["no_reference"] += 1
            rows.append(_judgement(a.prompt_id, a.model, method, failure="no reference"))
            continue
        if not has_judge:
            counts["no_judge"] += 1
            rows.append(_judgement(a.prompt_id, a.model, method, failure="no judge configured"))
            continue
        counts["llm_judge"] += 1
        pending.append((len(rows), judge_messages(str(p["prompt"]), str(p["reference_answer"]), answer)))
        rows.append(None)
    return rows, pending, counts


def verdict_judgement(pid, model, judged: Judged, endpoints: list[Endpoint], vote: str) -> dict:
    """The judgement row of one LLM-judged answer from the panel's outcome."""
    names = [e.name for e in endpoints]
    columns = judged.columns(names)
    return _judgement(
        pid,
        model,
        "llm_judge",
        judge_model=panel_name(endpoints, vote),
        rubric=RUBRIC_VERSION,
        failure=judged.failure(names),
        raw=columns.pop("judge_raw"),
        **columns,
    )


def grade_answers(
    pdf: pd.DataFrame,
    adf: pd.DataFrame,
    endpoint: Endpoint | list[Endpoint] | None,
    *,
    store: ArtifactStore,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    label: str = STAGE,
    partition: tuple[int, int] | None = None,
    sessions: list | None = None,
    caches: list | None = None,
    vote: str = "majority",
) -> tuple[pd.DataFrame, dict]:
    """The judgements of every row of `adf` and the counters (cost ledger fields included).
    `endpoint`: the judge, or a list of judges whose verdicts are voted (`vote`)."""
    endpoints = [endpoint] if isinstance(endpoint, Endpoint) else list(endpoint or [])
    pdf, adf = checked_tables(pdf, adf)
    rows, pending, counts = plan_rows(pdf, adf, bool(endpoints))
    keys = adf[["prompt_id", "model"]].to_numpy().tolist()
    by_judge: dict = {}
    if pending:
        judged, by_judge = ask_panel(
            endpoints,
            [conv for _, conv in pending],
            how=vote,
            prompt_version=RUBRIC_VERSION,
            store=store,
            label=label,
            sessions=sessions,
            caches=caches,
            partition=partition,
            flush_every=flush_every,
            max_failure_rate=max_failure_rate,
        )
        for (idx, _), outcome in zip(pending, judged, strict=False):
            rows[idx] = verdict_judgement(*keys[idx], outcome, endpoints, vote)
    df = _frame(rows)
    stats = total_stats(by_judge)
    llm = df[df["method"] == "llm_judge"]
    request_errors = int(llm["failure_reason"].fillna("").str.startswith("judge error").sum())
    parse_failures = int(
        (
            llm["failure_reason"].notna()
            & llm["judge_raw"].notna()
            & ~llm["failure_reason"].fillna("").str.startswith("judge error")
        ).sum()
    )
    judged_rows = len(pending) - request_errors
    stats.update(
        {
            **counts,
            "request_errors": request_errors,
            "parse_failures": parse_failures,
            "parse_failure_rate": round(parse_failures / judged_rows, 4) if judged_rows else 0.0,
            "verdicts_by_method": llm["verdict_method"].dropna().value_counts().to_dict(),
            "by_judge": by_judge,
        }
    )
    return df, stats


def plan_judging(prompts: dict, *, artifact_root: str | None = None) -> list[dict]:
    """The judge's parts, one per shard of the prompts: kwargs for `judge_part`."""
    _, shards = prompt_shards(prompts, ArtifactStore(artifact_root))  # from the manifest: no table read
    return [{"shard": s} for s in shards or [0]]


def _merge_by_judge(total: dict, part: dict) -> None:
    for name, stats in part.items():
        mine = total.setdefault(name, {})
        sum_stats(mine, {k: v for k, v in stats.items() if not isinstance(v, dict)})
        for k, v in stats.items():
            if isinstance(v, dict):
                sum_stats(mine.setdefault(k, {}), v)
            elif isinstance(v, str):
                mine[k] = v


def judge_part(
    prompts: dict,
    answers: dict,
    *,
    shard: int | None = None,
    judge: dict | None = None,
    judges: list[dict] | None = None,
    vote: str = "majority",
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Judgements of the answers to one shard of the prompts (all of them if `shard` is None).

    Reads that shard's files of the prompts and answers artifacts only (combine_answers
    checked every answer's prompt_id against the prompts), and writes in batches."""
    endpoints = judge_endpoints(judge, judges)
    check_vote(vote)

    def compute(ctx: StageContext) -> None:
        started = time.monotonic()
        label = f"{STAGE} shard {shard}"
        store = ctx.store
        n_shards, _ = prompt_shards(ctx.inputs["prompts"], store)
        partition = (n_shards, int(shard)) if shard is not None else None
        pdf = read_prompt_shard(ctx.inputs["prompts"], shard, store)
        answers_files = ctx.input_manifest("answers").get("files", {})
        if shard is not None and ANSWERS_SHARD_FILE.format(int(shard)) in answers_files:
            adf = ctx.read_input("answers", ANSWERS_SHARD_FILE.format(int(shard)))
        else:
            adf = ctx.read_input("answers")
            if shard is not None:
                checked_tables(
                    read_prompt_shard(ctx.inputs["prompts"], None, store), adf
                )  # unknown ids must not vanish
                adf = adf[adf["prompt_id"].isin(pdf["prompt_id"])]
        caches = [endpoint_cache(e, store, flush_every=flush_every) for e in endpoints]
        totals: dict = {}
        by_judge: dict = {}

        def batches(sessions):
            for lo in range(0, max(len(adf), 1), max(1, int(batch_rows))):
                df, stats = grade_answers(
                    pdf,
                    adf.iloc[lo : lo + batch_rows],
                    endpoints,
                    store=store,
                    max_failure_rate=1.0,
                    flush_every=flush_every,
                    label=label,
                    partition=partition,
                    sessions=sessions,
                    caches=caches,
                    vote=vote,
                )
                errs = df["failure_reason"].dropna()
                errs = errs[errs.str.startswith("judge error")]
                if len(errs) and "first_error" not in totals:
                    totals["first_error"] = errs.iloc[0]
                stats["failed_calls"] = stats.get("failures", 0)
                _merge_by_judge(by_judge, stats.pop("by_judge"))
                methods = stats.pop("verdicts_by_method")
                sum_stats(totals, stats)
                sum_stats(totals.setdefault("verdicts_by_method", {}), methods)
                yield df

        # one session per judge: a local server starts once for the part, and only if a call is needed
        with ExitStack() as stack:
            sessions = [stack.enter_context(EndpointSession(e)) for e in endpoints]
            ctx.write_table_batches(batches(sessions))
        totals.update(
            cache_files_read=sum(c.files_read for c in caches), cache_bytes_read=sum(c.bytes_read for c in caches)
        )
        who = f"judge {endpoints[0].name!r}" if len(endpoints) == 1 else f"judges {[e.name for e in endpoints]}"
        check_failure_rate(
            totals, max_failure_rate=max_failure_rate, label=label, who=who if endpoints else "the judge"
        )
        judged = totals.get("llm_judge", 0) - totals.get("request_errors", 0)
        totals["parse_failure_rate"] = round(totals.get("parse_failures", 0) / judged, 4) if judged else 0.0
        ctx.mark_incomplete(totals.get("request_errors", 0), "judge calls failed; asked again on the next run")
        ctx.stats.update(
            {
                **totals,
                "model": panel_name(endpoints, vote) if endpoints else None,
                "shard": shard,
                "by_judge": by_judge,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        log.info("%s: shard %s: %s", STAGE, shard, ctx.stats)

    return run_stage(
        PART_STAGE,
        STAGE_VERSION,
        compute,
        inputs={"prompts": prompts, "answers": answers},
        config={**judge_config(endpoints, vote), "shard": shard},
        store=ArtifactStore(artifact_root),
    )


# the parts' call counters (the ledger's fields) and the judge's own tallies
SUMMED = (
    *LEDGER_FIELDS,
    "exact_match",
    "llm_judge",
    "no_answer",
    "no_reference",
    "no_judge",
    "bad_gold",
    "request_errors",
    "parse_failures",
    "continuations",
)


def combine_judgements(
    prompts: dict,
    answers: dict,
    parts: list[dict],
    *,
    judge: dict | None = None,
    judges: list[dict] | None = None,
    vote: str = "majority",
    artifact_root: str | None = None,
    thresholds: dict | None = None,
) -> dict:
    """One judgements table from the parts; runs the judgements suite."""
    endpoints = judge_endpoints(judge, judges)
    check_vote(vote)
    names = part_inputs(parts, stage="combine_judgements")

    def compute(ctx: StageContext) -> None:

        frames, manifests = [], []
        for name in names:
            frames.append(ctx.read_input(name))
            manifests.append((ctx.input_manifest(name), bool(names[name].get("reused"))))
        totals = {k: sum(m["stats"].get(k, 0) for m, _ in manifests) for k in SUMMED}
        by_judge: dict = {}
        methods: dict = {}
        for m, _ in manifests:
            _merge_by_judge(by_judge, m["stats"].get("by_judge") or {})
            sum_stats(methods, m["stats"].get("verdicts_by_method") or {})
        df = _frame(pd.concat(frames, ignore_index=True))
        n_answers = ctx.input_manifest("answers").get("rows_out")
        if n_answers is not None and len(df) != n_answers or df.duplicated(["prompt_id", "model"]).any():
            raise ValueError(
                f"combine_judgements: {len(df)} judgements for {n_answers} answers (expected one "
                f"per answer): a part is missing or repeated"
            )
        th = ctx.config["quality"]
        df = enforce(ctx, df, judgements_suite(th), min_kept_share=th["min_kept_share"])
        ctx.write_table(df)
        ctx.mark_incomplete(totals["request_errors"], "judge calls failed; asked again on the next run")
        judged = totals["llm_judge"] - totals["request_errors"]
        ledger = {}
        if totals["llm_judge"]:
            for e in endpoints:  # each judge's calls and dollars on its own line
                ledger[e.name] = ledger_entry(
                    (m["stats"].get("by_judge", {}).get(e.name, {}), reused) for m, reused in manifests
                )
        ctx.stats.update(
            {
                **totals,
                "dollars": round(totals["dollars"], 6),
                "requests": sum(v["now"]["calls"] for v in ledger.values()),  # judge calls made by this run's parts
                "parse_failure_rate": round(totals["parse_failures"] / judged, 4) if judged else 0.0,
                "judge_model": panel_name(endpoints, vote) if endpoints else None,
                "judges": [e.name for e in endpoints],
                "vote": vote if len(endpoints) > 1 else None,
                "verdicts_by_method": methods,
                "by_judge": by_judge,
                "parts": len(names),
                "ledger": ledger,
                # time spent in the parts this run computed (they ran as tasks of their own)
                "part_seconds": round(sum(m["seconds"] for m, reused in manifests if not reused), 2),
                "by_model": _summary(df),
            }
        )
        log.info("%s: %s", STAGE, {k: v for k, v in ctx.stats.items() if k not in ("by_model", "by_judge")})

    return run_stage(
        STAGE,
        STAGE_VERSION,
        compute,
        inputs={"prompts": prompts, "answers": answers, **names},
        config={**judge_config(endpoints, vote), "quality": resolve_thresholds(thresholds)},
        store=ArtifactStore(artifact_root),
    )


def judge_answers(
    prompts: dict,
    answers: dict,
    *,
    judge: dict | None = None,
    judges: list[dict] | None = None,
    vote: str = "majority",
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    thresholds: dict | None = None,
) -> dict:
    """Grade the `answers` artifact against the `prompts` artifact; return the judgements ref.

    `judge` is an endpoint dict (see `core.endpoints.Endpoint`) for rows graded by reference;
    `judges` (a list of them) replaces it with a panel whose verdicts are voted (`vote`:
    "majority" or "mean"). Without either such rows get failure_reason "no judge
    configured". The DAG's plan -> parts -> combine, in one process.
    """
    judge_endpoints(judge, judges)  # fail before any work on bad config or a missing key
    check_vote(vote)
    parts = [
        judge_part(
            prompts,
            answers,
            **part,
            judge=judge,
            judges=judges,
            vote=vote,
            artifact_root=artifact_root,
            max_failure_rate=max_failure_rate,
            flush_every=flush_every,
        )
        for part in plan_judging(prompts, artifact_root=artifact_root)
    ]
    return combine_judgements(
        prompts,
        answers,
        parts,
        judge=judge,
        judges=judges,
        vote=vote,
        artifact_root=artifact_root,
        thresholds=thresholds,
    )


def _summary(df: pd.DataFrame) -> dict:
    """Per model: accuracy on exact-match rows, mean score on judged rows, failures."""
    out = {}
    for model, g in df.groupby("model", sort=True):
        correct = g["correct"].dropna()
        scores = g["score"].dropna()
        expected = g["score_expected"].dropna()
        out[str(model)] = {
            "rows": int(len(g)),
            "accuracy": round(float(correct.mean()), 4) if len(correct) else None,
            "mean_score": round(float(scores.mean()), 3) if len(scores) else None,
            "mean_expected_score": round(float(expected.mean()), 3) if len(expected) else None,
            "failures": int(g["failure_reason"].notna().sum()),
        }
    return out
