"""Exact-match grading: the final number of a GSM8K-style solution, the letter an
MMLU-style answer picks, compared with the gold answer (see `judge` for the stage)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

LETTERS = "ABCD"


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


def grade_exact(
    answer: str, gold: str, gold_type: str, prompt: str | None = None
) -> tuple[bool | None, str | None, str | None]:
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
