"""Judge stage: grade every answer, by exact match where a gold answer exists, else by an LLM.

Output (`judgements` table): prompt_id, model, method ("exact_match" | "llm_judge"),
score (Int64 1-5 or null), correct (boolean or null), judge_model, judge_raw,
failure_reason, rubric_version; one row per answer row, always.

- gold_type "number" (GSM8K): the answer's final number (after the last "####", else
  the last \\boxed{}, else the last number in the text; commas, "$" and "%" ignored) is
  compared numerically with the gold. gold_type "letter" (MMLU): the letter A-D the
  answer chooses. `correct` is set, `score` stays null; `judge_raw` holds the value read
  from the answer (null if none was found, which counts as incorrect).
- Otherwise, with a reference_answer: a reference-guided 1-5 LLM judge with our own
  rubric (RUBRIC_TEXT, versioned by RUBRIC_VERSION, stored on each row). The verdict
  must appear as [[n]]; a reply without one keeps its text in judge_raw with
  failure_reason "no [[n]] verdict" and no score: a guessed score would poison labels.
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
import re
import time
from decimal import Decimal, InvalidOperation

import pandas as pd

from router_tasks.data.ingest import prompt_shards, read_prompt_shard
from router_tasks.labeling.generate import (ANSWERS_SHARD_FILE, BATCH_ROWS, check_failure_rate, check_prompts,
                                            parse_endpoints, sum_stats)
from router_tasks.labeling.ledger import ledger_entry
from router_tasks.labeling.llm_client import ChatResult, Endpoint, EndpointSession, ask_all, endpoint_cache
from router_tasks.data.quality import resolve_thresholds
from router_tasks.core.stage import StageContext, load_table, part_inputs, run_stage, stable_hash
from router_tasks.core.schemas import cell_text
from router_tasks.core.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "judge"
PART_STAGE = "judge_part"  # one artifact per shard; STAGE combines them
STAGE_VERSION = "4"  # 4: shard files, batches, failed verdicts re-asked. 3: parts per shard, verdicts through the request cache. 2: judgements suite. Bump when grading logic (extraction, parsing) changes: old artifacts go stale
RUBRIC_VERSION = "ref-guided-1to5-v1"
LETTERS = "ABCD"

JUDGEMENT_COLUMNS = ["prompt_id", "model", "method", "score", "correct", "judge_model", "judge_raw",
                     "failure_reason", "rubric_version"]

# --------------------------------------------------------------------------------------
# Exact match
# --------------------------------------------------------------------------------------

# A number: optional sign and "$", digits with optional thousands commas, optional decimals.
_NUM = r"-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_HASHES_RE = re.compile(r"####\s*(.*)")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def normalize_number(text: str | None) -> Decimal | None:
    """'$1,234.50' -> Decimal('1234.50'); None if `text` holds no number."""
    if text is None:
        return None
    m = _NUM_RE.search(str(text))
    if not m:
        return None
    cleaned = m.group(0).replace(",", "").replace("$", "").replace(" ", "")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_number(answer: str | None) -> Decimal | None:
    """The final numeric answer of a GSM8K-style solution, or None."""
    if not answer:
        return None
    hashes = _HASHES_RE.findall(answer)
    if hashes:  # the GSM8K convention: "#### 42" ends the solution
        value = normalize_number(hashes[-1])
        if value is not None:
            return value
    boxed = _BOXED_RE.findall(answer)
    if boxed:
        value = normalize_number(boxed[-1])
        if value is not None:
            return value
    # Otherwise the last number in the text. Drop GSM8K calculator annotations
    # "<<2*3=6>>" first: the result right after them repeats the value anyway.
    text = re.sub(r"<<[^<>]*>>", " ", answer)
    nums = _NUM_RE.findall(text)
    return normalize_number(nums[-1]) if nums else None


def numbers_equal(a: Decimal | None, b: Decimal | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= Decimal("1e-6")


# The letter as a whole answer: "B", "(B)", "B.", "B)", "**B**".
_LETTER_ALONE = re.compile(r"^\W*\(?([A-Da-d])\)?\W*$")
# The letter opening the answer as a choice label: "B. paralysis", "(B) ...", "B) ...",
# "B: ...". A bare "A " is not enough: it is also the English article.
_LETTER_LEAD = re.compile(r"^\W*(?:\(([A-D])\)|([A-D])[.):](?=\s|$))")
# Explicit statements, anywhere: "answer is (C)", "Answer: D", "correct option is B",
# "choice B", "I choose C". The last one wins (models restate after reasoning).
_LETTER_STATED = re.compile(
    r"(?:answer|option|choice|choose|select|pick)\w*\s*(?:is|would be|:|=)?\s*[:\-]?\s*\**\(?([A-D])\)?\**(?![A-Za-z])",
    re.IGNORECASE,
)
_CHOICE_LINE = re.compile(r"^\s*([A-D])[.)]\s*(.+?)\s*$", re.MULTILINE)


def extract_letter(answer: str | None, prompt: str | None = None) -> str | None:
    """The choice (A-D) an MMLU-style answer picks, or None if it picks none clearly.

    With `prompt`, an answer that repeats exactly one choice's text picks that choice.
    """
    if not answer:
        return None
    text = answer.strip()
    m = _LETTER_ALONE.match(text)
    if m:
        return m.group(1).upper()
    m = _LETTER_LEAD.match(text)
    if m:
        return m.group(1) or m.group(2)
    stated = [s for s in _LETTER_STATED.findall(text) if s.upper() in LETTERS]
    # A lowercase "a" after "choose" is usually the article ("choose a ..."): accept
    # stated letters only in upper case.
    stated = [s for s in stated if s.isupper()]
    if stated:
        return stated[-1]
    if prompt:
        choices = dict((k, v.strip().rstrip(".").lower()) for k, v in _CHOICE_LINE.findall(prompt))
        low = text.lower()
        hits = [k for k, v in choices.items() if len(v) >= 3 and v in low]
        # Choices often nest ("paralysis" / "paralysis and loss of taste"): a hit whose
        # text lies inside another hit's text is explained by that longer one.
        hits = [k for k in hits if not any(o != k and choices[k] in choices[o] for o in hits)]
        if len(hits) == 1:
            return hits[0]
    return None


# --------------------------------------------------------------------------------------
# LLM judge
# --------------------------------------------------------------------------------------

RUBRIC_SYSTEM = (
    "You are a careful, impartial grader of AI assistant answers. You compare an answer "
    "with a reference answer written for the same question and rate it on a 1-5 scale. "
    "You judge substance, not style or length."
)

RUBRIC_TEXT = """Rate the assistant's answer to the question below, using the reference answer as the standard.

Rating scale:
5 = as good as or better than the reference: correct, complete and helpful.
4 = close to the reference: correct in substance, with small omissions or less clarity.
3 = moderate: partly correct or useful, but with clear gaps or some errors.
2 = much worse than the reference: mostly incorrect, incomplete or unhelpful.
1 = wrong, empty, off-topic or refuses without reason.

Check correctness first (facts, numbers, final result, code behaviour), then completeness, then clarity. Do not reward length for its own sake. A different approach from the reference is fine when it is correct.

[Question]
{question}

[Reference answer]
{reference}

[Assistant's answer]
{answer}

Explain your rating in one to three sentences. Then, on the last line, give the rating as a number inside double square brackets, like [[n]], with n from 1 to 5."""

_VERDICT_RE = re.compile(r"\[\[\s*([1-5])\s*\]\]")


def judge_messages(question: str, reference: str, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": RUBRIC_SYSTEM},
        {"role": "user", "content": RUBRIC_TEXT.format(question=question, reference=reference, answer=answer)},
    ]


def parse_verdict(text: str | None) -> int | None:
    """The last [[n]] (n in 1-5) in a judge reply, or None."""
    if not text:
        return None
    found = _VERDICT_RE.findall(text)
    return int(found[-1]) if found else None


# --------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------


def _judgement(pid, model, method, *, score=None, correct=None, judge_model=None, raw=None, failure=None,
               rubric=None) -> dict:
    return {"prompt_id": pid, "model": model, "method": method, "score": score, "correct": correct,
            "judge_model": judge_model, "judge_raw": raw, "failure_reason": failure, "rubric_version": rubric}


def grade_exact(answer: str, gold: str, gold_type: str, prompt: str | None = None) -> tuple[bool | None, str | None, str | None]:
    """(correct, extracted value as text, failure_reason) for one exact-match row."""
    if gold_type == "number":
        want = normalize_number(gold)
        if want is None:
            return None, None, f"gold answer {gold!r} is not a number"
        got = extract_number(answer)
        return numbers_equal(got, want), (None if got is None else format(got.normalize(), "f")), None
    if gold_type == "letter":
        want = str(gold).strip().strip("().").upper()
        if want not in LETTERS or len(want) != 1:
            return None, None, f"gold answer {gold!r} is not a letter A-D"
        got = extract_letter(answer, prompt)
        return got == want, got, None
    return None, None, f"unsupported gold_type {gold_type!r} (expected 'number' or 'letter')"


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=JUDGEMENT_COLUMNS)
    for col in ("prompt_id", "model", "method", "judge_model", "judge_raw", "failure_reason", "rubric_version"):
        df[col] = df[col].astype("string")
    df["score"] = df["score"].astype("Int64")
    df["correct"] = df["correct"].astype("boolean")
    return df


def judge_endpoint(judge: dict | None) -> Endpoint | None:
    """The judge's endpoint from config (None: no LLM judge); fails early on a missing key."""
    if judge is None:
        return None
    endpoint = parse_endpoints([judge], defaults={"max_tokens": 256, "temperature": 0.0}, where="judge")[0]
    endpoint.api_key()
    return endpoint


def _judge_config(endpoint: Endpoint | None) -> dict:
    return {
        "judge": endpoint.output_config() if endpoint else None,
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


def plan_rows(pdf: pd.DataFrame, adf: pd.DataFrame, endpoint: Endpoint | None):
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
        if endpoint is None:
            counts["no_judge"] += 1
            rows.append(_judgement(a.prompt_id, a.model, method, failure="no judge configured"))
            continue
        counts["llm_judge"] += 1
        pending.append((len(rows), judge_messages(str(p["prompt"]), str(p["reference_answer"]), answer)))
        rows.append(None)
    return rows, pending, counts


def grade_answers(
    pdf: pd.DataFrame, adf: pd.DataFrame, endpoint: Endpoint | None, *, store: ArtifactStore,
    max_failure_rate: float = 0.5, flush_every: int = 50, label: str = STAGE,
    partition: tuple[int, int] | None = None, session: EndpointSession | None = None, cache=None,
) -> tuple[pd.DataFrame, dict]:
    """The judgements of every row of `adf` and the counters (cost ledger fields included)."""
    pdf, adf = checked_tables(pdf, adf)
    rows, pending, counts = plan_rows(pdf, adf, endpoint)
    keys = adf[["prompt_id", "model"]].to_numpy().tolist()
    parse_failures = 0

    def verdict_row(idx: int, res: ChatResult) -> dict:
        nonlocal parse_failures
        pid, model = keys[idx]
        if res.error is not None:
            return _judgement(pid, model, "llm_judge", judge_model=endpoint.name,
                              failure=f"judge error: {res.error}", rubric=RUBRIC_VERSION)
        score = parse_verdict(res.answer)
        parse_failures += score is None
        return _judgement(pid, model, "llm_judge", score=score, judge_model=endpoint.name, raw=res.answer,
                          failure=None if score is not None else "no [[n]] verdict", rubric=RUBRIC_VERSION)

    stats: dict = {}
    if pending:
        results, calls = ask_all(endpoint, [conv for _, conv in pending], store=store, prompt_version=RUBRIC_VERSION,
                                 label=label, role="judge", max_failure_rate=max_failure_rate, flush_every=flush_every,
                                 partition=partition, session=session, cache=cache)
        for (idx, _), res in zip(pending, results):
            rows[idx] = verdict_row(idx, res)
        stats = calls.to_dict()
    df = _frame(rows)
    request_errors = int(df["failure_reason"].fillna("").str.startswith("judge error").sum())
    judged = len(pending) - request_errors
    stats.update({
        **counts,
        "request_errors": request_errors,
        "parse_failures": parse_failures,
        "parse_failure_rate": round(parse_failures / judged, 4) if judged else 0.0,
    })
    return df, stats


def plan_judging(prompts: dict, *, artifact_root: str | None = None) -> list[dict]:
    """The judge's parts, one per shard of the prompts: kwargs for `judge_part`."""
    _, shards = prompt_shards(prompts, ArtifactStore(artifact_root))  # from the manifest: no table read
    return [{"shard": s} for s in shards or [0]]


def judge_part(
    prompts: dict,
    answers: dict,
    *,
    shard: int | None = None,
    judge: dict | None = None,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Judgements of the answers to one shard of the prompts (all of them if `shard` is None).

    Reads that shard's files of the prompts and answers artifacts only (combine_answers
    checked every answer's prompt_id against the prompts), and writes in batches."""
    endpoint = judge_endpoint(judge)

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
                checked_tables(read_prompt_shard(ctx.inputs["prompts"], None, store), adf)  # unknown ids must not vanish
                adf = adf[adf["prompt_id"].isin(pdf["prompt_id"])]
        cache = endpoint_cache(endpoint, store, flush_every=flush_every) if endpoint else None
        totals: dict = {}

        def batches(session):
            for lo in range(0, max(len(adf), 1), max(1, int(batch_rows))):
                df, stats = grade_answers(pdf, adf.iloc[lo:lo + batch_rows], endpoint, store=store,
                                          max_failure_rate=1.0, flush_every=flush_every, label=label,
                                          partition=partition, session=session, cache=cache)
                errs = df["failure_reason"].dropna()
                errs = errs[errs.str.startswith("judge error")]
                if len(errs) and "first_error" not in totals:
                    totals["first_error"] = errs.iloc[0]
                stats["failed_calls"] = stats.get("failures", 0)
                sum_stats(totals, stats)
                yield df

        with EndpointSession(endpoint) if endpoint else _no_session() as session:
            ctx.write_table_batches(batches(session))
        if cache is not None:
            totals.update(cache_files_read=cache.files_read, cache_bytes_read=cache.bytes_read)
        check_failure_rate(totals, max_failure_rate=max_failure_rate, label=label,
                           who=f"judge {endpoint.name!r}" if endpoint else "the judge")
        judged = totals.get("llm_judge", 0) - totals.get("request_errors", 0)
        totals["parse_failure_rate"] = round(totals.get("parse_failures", 0) / judged, 4) if judged else 0.0
        ctx.mark_incomplete(totals.get("request_errors", 0), "judge calls failed; asked again on the next run")
        ctx.stats.update({**totals, "model": endpoint.name if endpoint else None, "shard": shard,
                          "seconds": round(time.monotonic() - started, 2)})
        log.info("%s: shard %s: %s", STAGE, shard, ctx.stats)

    return run_stage(PART_STAGE, STAGE_VERSION, compute, inputs={"prompts": prompts, "answers": answers},
                     config={**_judge_config(endpoint), "shard": shard}, store=ArtifactStore(artifact_root))


class _no_session:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


SUMMED = ("requests", "cached", "calls", "attempts", "retries", "failures", "input_tokens", "output_tokens",
          "dollars", "exact_match", "llm_judge", "no_answer", "no_reference", "no_judge", "bad_gold",
          "request_errors", "parse_failures")


def combine_judgements(
    prompts: dict,
    answers: dict,
    parts: list[dict],
    *,
    judge: dict | None = None,
    artifact_root: str | None = None,
    thresholds: dict | None = None,
) -> dict:
    """One judgements table from the parts; runs the judgements suite."""
    endpoint = judge_endpoint(judge)
    names = part_inputs(parts, stage="combine_judgements")

    def compute(ctx: StageContext) -> None:
        from router_tasks.data.quality import enforce, judgements_suite

        frames, manifests = [], []
        for name in names:
            frames.append(ctx.read_input(name))
            manifests.append((ctx.input_manifest(name), bool(names[name].get("reused"))))
        totals = {k: sum(m["stats"].get(k, 0) for m, _ in manifests) for k in SUMMED}
        entry = ledger_entry((m["stats"], reused) for m, reused in manifests)
        df = _frame(pd.concat(frames, ignore_index=True))
        n_answers = ctx.input_manifest("answers").get("rows_out")
        if n_answers is not None and len(df) != n_answers or df.duplicated(["prompt_id", "model"]).any():
            raise ValueError(f"combine_judgements: {len(df)} judgements for {n_answers} answers (expected one "
                             f"per answer): a part is missing or repeated")
        th = ctx.config["quality"]
        df = enforce(ctx, df, judgements_suite(th), min_kept_share=th["min_kept_share"])
        ctx.write_table(df)
        ctx.mark_incomplete(totals["request_errors"], "judge calls failed; asked again on the next run")
        judged = totals["llm_judge"] - totals["request_errors"]
        ctx.stats.update({
            **totals,
            "dollars": round(totals["dollars"], 6),
            "requests": entry["now"]["calls"],  # judge calls made by this run's parts
            "parse_failure_rate": round(totals["parse_failures"] / judged, 4) if judged else 0.0,
            "judge_model": endpoint.name if endpoint else None,
            "parts": len(names),
            "ledger": {endpoint.name: entry} if endpoint and totals["llm_judge"] else {},
            # time spent in the parts this run computed (they ran as tasks of their own)
            "part_seconds": round(sum(m["seconds"] for m, reused in manifests if not reused), 2),
            "by_model": _summary(df),
        })
        log.info("%s: %s", STAGE, {k: v for k, v in ctx.stats.items() if k != "by_model"})

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"prompts": prompts, "answers": answers, **names},
                     config={**_judge_config(endpoint), "quality": resolve_thresholds(thresholds)},
                     store=ArtifactStore(artifact_root))


def judge_answers(
    prompts: dict,
    answers: dict,
    *,
    judge: dict | None = None,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    flush_every: int = 50,
    thresholds: dict | None = None,
) -> dict:
    """Grade the `answers` artifact against the `prompts` artifact; return the judgements ref.

    `judge` is an endpoint dict (see `llm_client.Endpoint`) for rows graded by reference;
    without it such rows get failure_reason "no judge configured". The DAG's plan ->
    parts -> combine, in one process.
    """
    judge_endpoint(judge)  # fail before any work on bad config or a missing key
    parts = [judge_part(prompts, answers, **part, judge=judge, artifact_root=artifact_root,
                        max_failure_rate=max_failure_rate, flush_every=flush_every)
             for part in plan_judging(prompts, artifact_root=artifact_root)]
    return combine_judgements(prompts, answers, parts, judge=judge, artifact_root=artifact_root,
                              thresholds=thresholds)


def _summary(df: pd.DataFrame) -> dict:
    """Per model: accuracy on exact-match rows, mean score on judged rows, failures."""
    out = {}
    for model, g in df.groupby("model", sort=True):
        correct = g["correct"].dropna()
        scores = g["score"].dropna()
        out[str(model)] = {
            "rows": int(len(g)),
            "accuracy": round(float(correct.mean()), 4) if len(correct) else None,
            "mean_score": round(float(scores.mean()), 3) if len(scores) else None,
            "failures": int(g["failure_reason"].notna().sum()),
        }
    return out
