"""Cascades for live traffic: ask cheap models first, escalate when a check fails.

An opt-in policy for a gateway (the serving layer may call `run_cascade`; nothing calls
it by default). The checks are the ones `evaluation.cascades` measures on recorded
replies:

- ``agreement``: ask `first` (two or more cheap models); if all their final answers
  agree, return the first one's reply; else ask `final` and return its reply.
- ``verifier``: ask `first[0]`; `verifier(prompt, reply) -> P(correct)` (a trained
  scorer over the reply, or an LLM-judge call wrapped as one); accept at >= threshold.
- ``confidence``: `router.predict_quality([prompt])[first[0]] >= threshold` decides,
  before any call, whether the cheap model answers or `final` does (one call).

`call(model, prompt) -> reply text` is the gateway's own client (any OpenAI-compatible
endpoint). Costs are the gateway's to count: every call made is listed in the result.
Final answers are read with `answer_of` (default: the `answer` field of the first JSON
object in the reply, ZeroEval's convention, falling back to the last number).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from router_tasks.data.zeroeval import extract_answer

CHECKS = ("agreement", "verifier", "confidence")


def default_answer(reply: str) -> str | None:
    """The reply's final answer, normalised for comparison: the first JSON object's
    `answer` (numbers compared as numbers), else the last number in the text."""
    answer, _, _ = extract_answer(reply or "")
    if answer is None:
        nums = re.findall(r"-?\d+(?:\.\d+)?", (reply or "").replace(",", ""))
        answer = nums[-1] if nums else None
    if answer is None:
        return None
    text = str(answer).strip().strip("'\"").replace(",", "").replace("$", "")
    try:
        return repr(round(float(text), 6))
    except ValueError:
        return text


@dataclass
class CascadeResult:
    reply: str
    answered_by: str
    calls: list[str] = field(default_factory=list)  # every model called, in order
    accepted_early: bool = False
    detail: dict = field(default_factory=dict)


@dataclass
class Cascade:
    """A cascade configuration (see the module docstring)."""

    check: str
    first: Sequence[str]
    final: str
    threshold: float = 0.5
    verifier: Callable[[str, str], float] | None = None
    router: object | None = None
    answer_of: Callable[[str], str | None] = default_answer

    def __post_init__(self):
        if self.check not in CHECKS:
            raise ValueError(f"unknown cascade check {self.check!r}; known: {list(CHECKS)}")
        if not self.first:
            raise ValueError("a cascade needs at least one first model")
        if self.check == "agreement" and len(self.first) < 2:
            raise ValueError("an agreement cascade needs two or more first models")
        if self.check == "verifier" and self.verifier is None:
            raise ValueError("a verifier cascade needs verifier(prompt, reply) -> P(correct)")
        if self.check == "confidence" and self.router is None:
            raise ValueError("a confidence cascade needs a router (predict_quality)")


def run_cascade(cascade: Cascade, prompt: str, call: Callable[[str, str], str]) -> CascadeResult:
    """Answer `prompt` through `cascade`, calling models with `call(model, prompt)`."""
    c = cascade
    if c.check == "confidence":
        q = float(c.router.predict_quality([prompt])[c.first[0]].iloc[0])
        model = c.first[0] if q >= c.threshold else c.final
        reply = call(model, prompt)
        return CascadeResult(reply, model, [model], model != c.final, {"predicted_quality": q})
    if c.check == "agreement":
        replies = [call(m, prompt) for m in c.first]
        answers = [c.answer_of(r) for r in replies]
        if answers[0] is not None and all(a == answers[0] for a in answers):
            return CascadeResult(replies[0], c.first[0], list(c.first), True, {"answers": answers})
        reply = call(c.final, prompt)
        return CascadeResult(reply, c.final, [*c.first, c.final], False, {"answers": answers})
    reply = call(c.first[0], prompt)
    p = float(c.verifier(prompt, reply))
    if p >= c.threshold:
        return CascadeResult(reply, c.first[0], [c.first[0]], True, {"verifier": p})
    final = call(c.final, prompt)
    return CascadeResult(final, c.final, [c.first[0], c.final], False, {"verifier": p})
