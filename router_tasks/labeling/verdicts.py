"""Reading a judge's 1-5 verdict, and several judges' verdicts voted into one.

The rubric asks the judge to end with `[[n]]`. Where the endpoint returns token
log-probabilities, the verdict is read from the probabilities of `1`..`5` at the position
right after `[[` (renormalised over those five), so a verdict is a distribution: its argmax
is the score (ties go to the lower score), its mean the expected score. How that position
is reached depends on the endpoint (its `verdict` field, "auto" by default):

- "continue" (the default for base_url "local", our server; also vLLM): the judge's reply
  is asked with `logprobs`; when it holds no readable `[[n]]`, which a small model seldom
  writes, a second call continues the judge's own reply cut at its last `[[` (or with
  `\\n[[` added) as a prefilled assistant turn (`continue_final_message`, with
  `add_generation_prompt: false`), constrained to the five digits
  (`structured_outputs: {"choice": [...]}`), one token long: a verdict every time.
- "logprobs" (the default for any other endpoint, e.g. OpenAI, which continues no
  prefilled turn): the reply is asked with `logprobs`; the distribution is read at its last
  `[[`; a reply without one, or an endpoint that returns no logprobs, falls back to the text.
- "text": no logprobs are asked; the last `[[n]]` in the text is the score (today's parse),
  and a reply without one keeps its failure reason.

`method` in the judgements says which one gave each verdict: "logprobs", "continuation"
or "text".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

SCORES = (1, 2, 3, 4, 5)
DIGITS = tuple(str(s) for s in SCORES)
OPEN = "[["
#: the most alternatives OpenAI returns per token
TOP_LOGPROBS = 20
VOTES = ("majority", "mean")
NO_VERDICT = "no [[n]] verdict"
NO_CONTINUED_VERDICT = "no 1-5 verdict after [["

#: the verdict request of the "continue" path: one token after the prefilled `[[`, one of the digits
CONTINUE_OPTIONS = {
    "logprobs": True,
    "top_logprobs": TOP_LOGPROBS,
    "continue_final_message": True,
    "add_generation_prompt": False,
    "structured_outputs": {"choice": list(DIGITS)},
}
_VERDICT_RE = re.compile(r"\[\[\s*([1-5])\s*\]\]")


def resolve_path(verdict: str, is_local: bool) -> str:
    """An endpoint's verdict path: "auto" becomes "continue" for our server, else "logprobs"."""
    if verdict == "auto":
        return "continue" if is_local else "logprobs"
    return verdict


def reply_options(path: str) -> dict | None:
    """Request options of the judge's reply on `path` (None: a plain request)."""
    return None if path == "text" else {"logprobs": True, "top_logprobs": TOP_LOGPROBS}


def parse_verdict(text: str | None) -> int | None:
    """The last [[n]] (n in 1-5) in a judge reply, or None."""
    if not text:
        return None
    found = _VERDICT_RE.findall(text)
    return int(found[-1]) if found else None


def continuation(conversation: list[dict], reply: str | None) -> list[dict]:
    """The judge's conversation with its reply as a prefilled assistant turn ending in `[[`:
    cut after the reply's last `[[`, or with a new line and `[[` added."""
    text = (reply or "").rstrip()
    at = text.rfind(OPEN)
    prefix = text[: at + len(OPEN)] if at >= 0 else (f"{text}\n" if text else "") + OPEN
    return [*conversation, {"role": "assistant", "content": prefix}]


def _text(tokens: list) -> str:
    return "".join(t["token"] for t in tokens)


def verdict_window(tokens: list | None) -> list | None:
    """The few tokens from the one holding a reply's last `[[`: all the verdict needs, so
    all that is cached of a judge reply's log-probabilities. None: the reply has no `[[`."""
    if not tokens:
        return None
    at = _text(tokens).rfind(OPEN)
    if at < 0:
        return None
    start = 0
    for i, t in enumerate(tokens):
        start += len(t["token"])
        if start > at:
            return tokens[i : i + 4]
    return None


def _digit_mass(tokens: list, i: int, prefix: str) -> list[float]:
    """P(each digit) at token i (the verdict position `prefix` characters into it); a
    whitespace token chosen there weighs the digits of the token after it."""
    tok = tokens[i]
    alternatives = {a: lp for a, lp in tok.get("top") or []}
    alternatives.setdefault(tok["token"], tok["logprob"])
    mass = [0.0] * len(DIGITS)
    for alt, lp in alternatives.items():
        if not alt.startswith(prefix):
            continue
        rest = alt[len(prefix) :].lstrip()
        if rest[:1] in DIGITS and not rest[1:2].isdigit():
            mass[DIGITS.index(rest[:1])] += math.exp(lp)
    if not prefix and not tok["token"].strip() and i + 1 < len(tokens):
        after = _digit_mass(tokens, i + 1, "")  # "[[ 4]]": the space first, then the digit
        mass = [m + math.exp(tok["logprob"]) * a for m, a in zip(mass, after, strict=False)]
    return mass


def distribution(tokens: list | None, *, after_open: bool = True) -> tuple[float, ...] | None:
    """P(1)..P(5) at the verdict position, renormalised over the five; None when no
    probability of a digit is there. The position is right after the last `[[` of the
    tokens (`after_open`), or the first token (a continuation's reply). A token holding
    text before the position ("[[4" as one token) counts by its alternatives with the same
    text before it; a whitespace token there weighs the digits of the next one."""
    if not tokens:
        return None
    text = _text(tokens)
    at = text.rfind(OPEN) if after_open else 0
    if at < 0:
        return None
    pos = at + len(OPEN) if after_open else 0
    start = 0
    for i, tok in enumerate(tokens):
        end = start + len(tok["token"])
        if end > pos:
            mass = _digit_mass(tokens, i, text[start:pos])
            total = sum(mass)
            return tuple(m / total for m in mass) if total > 0 else None
        start = end
    return None


@dataclass(frozen=True)
class Verdict:
    """One judge's verdict on one answer; `failure` set (and no score) when none was read."""

    score: int | None
    probs: tuple[float, ...] | None = None  # P(1)..P(5), when read from log-probabilities
    method: str | None = None  # "logprobs" | "continuation" | "text"
    failure: str | None = None

    @property
    def expected(self) -> float | None:
        if self.probs is not None:
            return float(sum(p * s for p, s in zip(self.probs, SCORES, strict=False)))
        return None if self.score is None else float(self.score)


def _argmax(probs: tuple[float, ...]) -> int:
    return SCORES[max(range(len(probs)), key=lambda i: (probs[i], -i))]


def from_reply(text: str | None, tokens: list | None) -> Verdict:
    """The verdict of a judge reply: its distribution after the last `[[`, else its text."""
    probs = distribution(tokens)
    if probs is not None:
        return Verdict(_argmax(probs), probs, "logprobs")
    score = parse_verdict(text)
    return Verdict(score, None, "text", None if score is not None else NO_VERDICT)


def from_continuation(text: str | None, tokens: list | None) -> Verdict:
    """The verdict of a continued reply (the token right after the prefilled `[[`)."""
    probs = distribution(tokens, after_open=False)
    if probs is not None:
        return Verdict(_argmax(probs), probs, "continuation")
    head = (text or "").strip()[:1]
    if head in DIGITS:
        return Verdict(int(head), None, "continuation")
    return Verdict(None, None, "continuation", NO_CONTINUED_VERDICT)


@dataclass(frozen=True)
class Vote:
    """Several judges' verdicts on one answer, combined."""

    score: int
    probs: tuple[float, ...] | None  # the judges' mean distribution (a text verdict counts as certain)
    expected: float
    disagreement: float  # share of the voting judges whose score differs from `score`
    judges: int  # judges whose verdict counted


def vote(verdicts: Sequence[Verdict], how: str = "majority") -> Vote | None:
    """One verdict from several (None if no judge gave one).

    "majority": the most frequent score; a tie goes to the tied score nearest the judges'
    mean expected score (their probabilities count there), then to the lower one. "mean":
    the judges' mean expected score, rounded half up. With one judge both are that judge's
    verdict."""
    if how not in VOTES:
        raise ValueError(f"vote must be one of {list(VOTES)}, got {how!r}")
    have = [v for v in verdicts if v.score is not None]
    if not have:
        return None
    dists = [v.probs if v.probs is not None else tuple(float(s == v.score) for s in SCORES) for v in have]
    mean_probs = tuple(sum(d[i] for d in dists) / len(dists) for i in range(len(SCORES)))
    expected = sum(v.expected for v in have) / len(have)
    if how == "majority":
        counts = Counter(v.score for v in have)
        top = max(counts.values())
        tied = [s for s in SCORES if counts.get(s) == top]
        score = min(tied, key=lambda s: (abs(s - expected), s))
    else:
        score = min(max(int(math.floor(expected + 0.5)), SCORES[0]), SCORES[-1])
    disagreement = sum(v.score != score for v in have) / len(have)
    probs = mean_probs if any(v.probs is not None for v in have) else None
    return Vote(score, probs, float(expected), float(disagreement), len(have))
