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
  stage raises instead (a broken judge must not become a reused artifact). Replies are
  checkpointed under the artifact folder while the stage runs, so a re-run after a crash
  or an abort asks the judge only for what it has not answered yet.
- No answer (generation error): failure_reason "no answer". Neither gold nor reference:
  failure_reason "no reference" (references come from a later stage).
"""

from __future__ import annotations

import logging
import math
import re
import time
from decimal import Decimal, InvalidOperation

import pandas as pd

from router_tasks.generate import parse_endpoints
from router_tasks.llm_client import ChatResult, Progress, chat_many, open_endpoint
from router_tasks.quality import resolve_thresholds
from router_tasks.stage import StageContext, run_stage, stable_hash
from router_tasks.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "judge"
STAGE_VERSION = "2"  # 2: judgements suite. Bump when grading logic (extraction, parsing) changes: old artifacts go stale
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


def _text(value) -> str | None:
    """A table cell as text; None for null/NaN/NA and blank strings."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


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


def judge_answers(
    prompts: dict,
    answers: dict,
    *,
    judge: dict | None = None,
    artifact_root: str | None = None,
    max_failure_rate: float = 0.5,
    checkpoint_every: int = 50,
    thresholds: dict | None = None,
) -> dict:
    """Grade the `answers` artifact against the `prompts` artifact; return the judgements ref.

    `judge` is an endpoint dict (see `llm_client.Endpoint`) for rows graded by reference;
    without it such rows get failure_reason "no judge configured".
    """
    endpoint = None
    if judge is not None:
        endpoint = parse_endpoints([judge], defaults={"max_tokens": 256, "temperature": 0.0}, where="judge")[0]
        endpoint.api_key()  # fail before any work if the key variable is missing
    config = {
        "judge": endpoint.output_config() if endpoint else None,
        "rubric_version": RUBRIC_VERSION,
        # The exact texts: an edit without a version bump still gets a new artifact.
        "rubric_hash": stable_hash([RUBRIC_SYSTEM, RUBRIC_TEXT]),
        "quality": resolve_thresholds(thresholds),
    }

    def compute(ctx: StageContext) -> None:
        pdf = ctx.read_input("prompts")
        adf = ctx.read_input("answers")
        for name, df, cols in (("prompts", pdf, ("prompt_id", "prompt")), ("answers", adf, ("prompt_id", "model", "answer", "error"))):
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise ValueError(f"{name} table lacks column(s) {missing}; has {list(df.columns)}")
        for col in ("gold_answer", "gold_type", "reference_answer"):
            if col not in pdf.columns:
                pdf[col] = None
        dupes = pdf["prompt_id"][pdf["prompt_id"].duplicated()].unique().tolist()
        if dupes:
            raise ValueError(f"prompts table: prompt_id must be unique; repeated: {dupes[:5]}")
        by_id = pdf.set_index("prompt_id")
        unknown = sorted(set(adf["prompt_id"]) - set(by_id.index))
        if unknown:
            raise ValueError(f"answers table has {len(unknown)} prompt_id(s) not in the prompts table, e.g. {unknown[:5]}")

        rows: list[dict | None] = []
        pending: list[tuple[int, list[dict]]] = []  # (row index, judge conversation)
        counts = {"exact_match": 0, "llm_judge": 0, "no_answer": 0, "no_reference": 0, "no_judge": 0,
                  "bad_gold": 0}
        for a in adf.itertuples(index=False):
            p = by_id.loc[a.prompt_id]
            gold, gold_type = _text(p["gold_answer"]), _text(p["gold_type"])
            method = "exact_match" if gold and gold_type else "llm_judge"
            # An empty string is an answer (a bad one); null or an error is none at all.
            answer = a.answer if isinstance(a.answer, str) else None
            if _text(a.error) is not None or answer is None:
                counts["no_answer"] += 1
                rows.append(_judgement(a.prompt_id, a.model, method, failure="no answer"))
                continue
            if method == "exact_match":
                correct, raw, failure = grade_exact(answer, gold, gold_type, _text(p["prompt"]))
                counts["exact_match" if failure is None else "bad_gold"] += 1
                rows.append(_judgement(a.prompt_id, a.model, method, correct=correct, raw=raw, failure=failure))
                continue
            if _text(p["reference_answer"]) is None:
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

        requests = request_errors = parse_failures = 0
        started = time.monotonic()
        adf_rows = adf[["prompt_id", "model"]].to_numpy().tolist()

        def verdict_row(idx: int, res: ChatResult) -> dict:
            nonlocal request_errors, parse_failures
            pid, model = adf_rows[idx]
            if res.error is not None:
                request_errors += 1
                return _judgement(pid, model, "llm_judge", judge_model=endpoint.name,
                                  failure=f"judge error: {res.error}", rubric=RUBRIC_VERSION)
            score = parse_verdict(res.answer)
            parse_failures += score is None
            return _judgement(pid, model, "llm_judge", score=score, judge_model=endpoint.name, raw=res.answer,
                              failure=None if score is not None else "no [[n]] verdict", rubric=RUBRIC_VERSION)

        # Replies a previous, interrupted attempt already paid for.
        saved = _read_checkpoint(ctx)
        resumed = 0
        todo = []
        for idx, conv in pending:
            raw = saved.get(tuple(adf_rows[idx]))
            if raw is not None:
                rows[idx] = verdict_row(idx, ChatResult(raw, "stop", None, 0, 0, 0.0))
                resumed += 1
            else:
                todo.append((idx, conv))
        if resumed:
            log.info("%s: %d verdicts from a previous attempt's checkpoint", STAGE, resumed)

        if todo:
            progress = Progress(f"{STAGE} {endpoint.name}", len(todo))
            since_ckpt = 0

            def on_result(i: int, res: ChatResult) -> None:
                nonlocal since_ckpt
                rows[todo[i][0]] = verdict_row(todo[i][0], res)
                progress.update(res)
                since_ckpt += 1
                if since_ckpt >= checkpoint_every:
                    since_ckpt = 0
                    _write_checkpoint(ctx, rows)

            log.info("%s: asking %s for %d verdicts", STAGE, endpoint.name, len(todo))
            with open_endpoint(endpoint) as client:
                try:
                    chat_many(client, [conv for _, conv in todo], on_result=on_result)
                finally:
                    requests = client.requests
                    _write_checkpoint(ctx, rows)
            if request_errors / len(todo) > max_failure_rate:
                first = next(r["failure_reason"] for r in rows if r and str(r["failure_reason"]).startswith("judge error"))
                raise RuntimeError(
                    f"{STAGE}: {request_errors}/{len(todo)} calls to judge {endpoint.name!r} failed "
                    f"(over max_failure_rate={max_failure_rate}); first: {first}. "
                    f"Verdicts received are checkpointed; fix the judge endpoint and re-run."
                )

        from router_tasks.quality import enforce, judgements_suite

        df = _frame(rows)
        th = ctx.config["quality"]
        df = enforce(ctx, df, judgements_suite(th), min_kept_share=th["min_kept_share"])
        ctx.write_table(df)
        judged = len(pending) - request_errors
        ctx.stats.update({
            **counts,
            "requests": requests,
            "reused_from_checkpoint": resumed,
            "request_errors": request_errors,
            "parse_failures": parse_failures,
            "parse_failure_rate": round(parse_failures / judged, 4) if judged else 0.0,
            "judge_seconds": round(time.monotonic() - started, 2),
            "by_model": _summary(df),
        })
        log.info("%s: %s", STAGE, {k: v for k, v in ctx.stats.items() if k != "by_model"})
        ctx.clear_checkpoint("verdicts")  # the table now holds every verdict

    return run_stage(STAGE, STAGE_VERSION, compute, inputs={"prompts": prompts, "answers": answers},
                     config=config, store=ArtifactStore(artifact_root))


def _write_checkpoint(ctx: StageContext, rows: list[dict | None]) -> None:
    """Judge replies received so far (not request errors), outside the manifest."""
    got = [r for r in rows if r and r["method"] == "llm_judge" and r["judge_raw"] is not None]
    ctx.write_checkpoint("verdicts", pd.DataFrame(got, columns=["prompt_id", "model", "judge_raw"]).astype("string"))


def _read_checkpoint(ctx: StageContext) -> dict[tuple[str, str], str]:
    df = ctx.read_checkpoint("verdicts")
    if df is None:
        return {}
    return {(r.prompt_id, r.model): r.judge_raw for r in df.itertuples(index=False)}


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
