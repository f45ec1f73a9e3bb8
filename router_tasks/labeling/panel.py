"""Ask one judge or a panel of judges for verdicts on a list of judge conversations.

Each judge is asked every conversation through the request cache (`ask_all`), which keeps
every judge's replies apart (its cache is its endpoint's), so a re-run, or a run with one
judge added, pays only for what no judge has answered before. A judge on the "continue"
path (`verdicts`) is asked a second, one-token call for the replies its first answer gave
no verdict in. The judges' verdicts are then voted into one (`verdicts.vote`).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass

from router_tasks.core.endpoints import Endpoint
from router_tasks.labeling import verdicts as vd
from router_tasks.labeling.generate import sum_stats
from router_tasks.labeling.llm_client import EndpointSession, ask_all, endpoint_cache
from router_tasks.labeling.verdicts import Verdict, Vote

#: bump when the reading of verdicts changes: judgements read from cached replies change too
READER_VERSION = "1"


@dataclass
class Judged:
    """The panel's outcome for one conversation."""

    vote: Vote | None  # None: no judge gave a verdict
    verdicts: list[Verdict | None]  # per judge; None where its call failed
    raws: list[str | None]  # per judge: its reply text
    errors: list[str | None]  # per judge: why its call failed

    def failure(self, names: list[str]) -> str | None:
        errors = [(n, e) for n, e in zip(names, self.errors, strict=False) if e]
        if errors:  # asked again on the next run; the other judges' replies are cached
            n, e = errors[0]
            return f"judge error: {e}" if len(names) == 1 else f"judge error: {n}: {e}"
        if self.vote is None:
            reasons = sorted({v.failure for v in self.verdicts if v is not None and v.failure})
            return "; ".join(reasons) or vd.NO_VERDICT
        return None

    def columns(self, names: list[str]) -> dict:
        """The judgement columns this outcome fills (failure_reason aside)."""
        v = self.vote
        methods = [x.method for x in self.verdicts if x is not None and x.score is not None]
        several = len(names) > 1
        return {
            "score": None if v is None else v.score,
            "score_expected": None if v is None else v.expected,
            "score_probs": None if v is None or v.probs is None else json.dumps([round(p, 6) for p in v.probs]),
            "verdict_method": "+".join(sorted(set(methods))) or None,
            "judge_raw": (json.dumps(dict(zip(names, self.raws, strict=False))) if several else self.raws[0]),
            "judge_votes": (
                json.dumps(
                    {n: (x.score if x is not None else None) for n, x in zip(names, self.verdicts, strict=False)}
                )
                if several
                else None
            ),
            "judge_disagreement": None if v is None or not several else v.disagreement,
        }


def panel_name(endpoints: list[Endpoint], how: str) -> str:
    """The `judge_model` of a verdict: the judge's name, or the vote over several."""
    if len(endpoints) == 1:
        return endpoints[0].name
    return f"{how}({', '.join(e.name for e in endpoints)})"


def _ask_one(
    endpoint: Endpoint, conversations: list[list[dict]], *, prompt_version: str, session, cache, **kw
) -> tuple[list[Verdict | None], list[str | None], list[str | None], dict]:
    path = vd.resolve_path(endpoint.verdict, endpoint.is_local)
    results, calls = ask_all(
        endpoint,
        conversations,
        prompt_version=prompt_version,
        role="judge",
        session=session,
        cache=cache,
        options=vd.reply_options(path),
        keep_logprobs=vd.verdict_window,
        **kw,
    )
    stats = calls.to_dict()
    verdicts: list[Verdict | None] = [None if r.error else vd.from_reply(r.answer, r.logprobs) for r in results]
    again = [i for i, v in enumerate(verdicts) if v is not None and v.score is None]
    if path == "continue" and again:
        more, calls2 = ask_all(
            endpoint,
            [vd.continuation(conversations[i], results[i].answer) for i in again],
            prompt_version=prompt_version,
            role="judge",
            session=session,
            cache=cache,
            options=vd.CONTINUE_OPTIONS,
            max_tokens=1,
            **kw,
        )
        sum_stats(stats, calls2.to_dict())
        for i, r in zip(again, more, strict=False):
            if r.error is None:
                verdicts[i] = vd.from_continuation(r.answer, r.logprobs)
        stats["continuations"] = len(again)
    answered = [v for v in verdicts if v is not None]
    stats["parse_failures"] = sum(v.score is None for v in answered)
    stats["verdicts"] = {
        m: sum(v.method == m and v.score is not None for v in answered) for m in ("logprobs", "continuation", "text")
    }
    stats["path"] = path
    return verdicts, [r.answer for r in results], [r.error for r in results], stats


def ask_panel(
    endpoints: list[Endpoint],
    conversations: list[list[dict]],
    *,
    how: str,
    prompt_version: str,
    store,
    label: str,
    sessions: list | None = None,
    caches: list | None = None,
    partition: tuple[int, int] | None = None,
    flush_every: int = 50,
    max_failure_rate: float = 1.0,
) -> tuple[list[Judged], dict]:
    """Every judge's verdict on every conversation, voted; and per-judge stats."""
    if how not in vd.VOTES:
        raise ValueError(f"vote must be one of {list(vd.VOTES)}, got {how!r}")
    if not conversations:
        return [], {}
    per_judge, stats = [], {}
    with ExitStack() as stack:
        if sessions is None:
            sessions = [stack.enter_context(EndpointSession(e)) for e in endpoints]
        caches = caches or [endpoint_cache(e, store, flush_every=flush_every) for e in endpoints]
        for endpoint, session, cache in zip(endpoints, sessions, caches, strict=False):
            out = _ask_one(
                endpoint,
                conversations,
                prompt_version=prompt_version,
                session=session,
                cache=cache,
                store=store,
                label=label,
                partition=partition,
                flush_every=flush_every,
                max_failure_rate=max_failure_rate,
            )
            per_judge.append(out[:3])
            stats[endpoint.name] = out[3]
    judged = []
    for i in range(len(conversations)):
        verdicts = [v[i] for v, _, _ in per_judge]
        raws = [r[i] for _, r, _ in per_judge]
        errors = [e[i] for _, _, e in per_judge]
        vote = vd.vote([v for v, e in zip(verdicts, errors, strict=False) if v is not None and not e], how)
        judged.append(Judged(vote if not any(errors) else None, verdicts, raws, errors))
    return judged, stats


def total_stats(by_judge: dict) -> dict:
    """The judges' call counters summed (the ledger's and the failure checks' view)."""
    total: dict = {}
    for stats in by_judge.values():
        sum_stats(total, {k: v for k, v in stats.items() if not isinstance(v, dict)})
    return total
