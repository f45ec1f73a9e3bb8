"""The gateway's opt-in cascade: calls made, answer returned, for each check."""

from __future__ import annotations

import pandas as pd
import pytest

from router_tasks.routing.cascade import Cascade, default_answer, run_cascade


class Endpoints:
    """Scripted models: each returns a fixed reply per prompt; every call is logged."""

    def __init__(self, replies):
        self.replies, self.log = replies, []

    def __call__(self, model, prompt):
        self.log.append(model)
        return self.replies[model][prompt]


REPLIES = {
    "cheap-a": {"p1": '{"reasoning": "..", "answer": "18"}', "p2": '{"answer": "7"}'},
    "cheap-b": {"p1": "so the answer: 18.0", "p2": '{"answer": "8"}'},
    "dear": {"p1": '{"answer": "18"}', "p2": '{"answer": "9"}'},
}


def test_agreement_accepts_when_cheap_answers_agree_else_escalates():
    calls = Endpoints(REPLIES)
    c = Cascade("agreement", first=["cheap-a", "cheap-b"], final="dear")
    r = run_cascade(c, "p1", calls)  # 18 and 18.0 agree
    assert r.answered_by == "cheap-a" and r.accepted_early and r.calls == ["cheap-a", "cheap-b"]
    r = run_cascade(c, "p2", calls)
    assert r.answered_by == "dear" and r.calls == ["cheap-a", "cheap-b", "dear"] and default_answer(r.reply) == "9.0"
    assert calls.log == ["cheap-a", "cheap-b", "cheap-a", "cheap-b", "dear"]  # every call, once


def test_verifier_and_confidence_checks():
    calls = Endpoints(REPLIES)
    sure = Cascade(
        "verifier",
        first=["cheap-a"],
        final="dear",
        threshold=0.5,
        verifier=lambda prompt, reply: 0.9 if "reasoning" in reply else 0.1,
    )
    assert run_cascade(sure, "p1", calls).calls == ["cheap-a"]
    assert run_cascade(sure, "p2", calls).calls == ["cheap-a", "dear"]

    class Router:
        def predict_quality(self, prompts):
            return pd.DataFrame({"cheap-a": [0.95 if p == "p1" else 0.2 for p in prompts]})

    conf = Cascade("confidence", first=["cheap-a"], final="dear", threshold=0.8, router=Router())
    assert run_cascade(conf, "p1", calls).calls == ["cheap-a"]
    assert run_cascade(conf, "p2", calls).calls == ["dear"]  # one call either way
    with pytest.raises(ValueError, match="two or more first models"):
        Cascade("agreement", first=["cheap-a"], final="dear")
    with pytest.raises(ValueError, match="needs verifier"):
        Cascade("verifier", first=["cheap-a"], final="dear")
