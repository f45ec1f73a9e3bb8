"""Model names that select a routing policy, and the decision they make from a router's
predictions for one prompt.

    tela-auto                 the router's calibrated threshold (stored calibration)
    tela-auto@0.3             the threshold that sent 30% of the calibration sample to the strong model
    router-<kind>-<t>         RouteLLM's form: strong model when strong_win_rate >= t
    tela-cheapest@0.8         many models: the cheapest whose predicted quality >= 0.8
    tela-budget@2.5           many models: the best predicted quality within $2.50 per 1k requests
    <anything else>           that upstream, unrouted

The policy functions themselves live in `routing.choice` / `routing.thresholds`;
this module only parses names and orders the fallback chain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from router_tasks.routing import choice as routing
from router_tasks.routing.thresholds import threshold_for_share

AUTO = "tela-auto"
DEFAULT_THRESHOLD = 0.5  # used only when a router has no stored calibration (logged)


class PolicyError(ValueError):
    """A model name that asks for a policy the gateway cannot apply (an HTTP 400)."""


@dataclass(frozen=True)
class Policy:
    kind: str  # "auto" | "share" | "threshold" | "cheapest" | "budget" | "direct"
    value: float | None = None
    router_kind: str | None = None  # router-<kind>-<t>: the router kind asked for
    name: str = ""

    @property
    def routed(self) -> bool:
        return self.kind != "direct"


_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _unit_value(text: str, model: str, what: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise PolicyError(f"model {model!r}: {what} must be in [0, 1]")
    return value


def parse_model_name(name: str) -> Policy:
    """The policy a request's `model` names; `direct` for any name that is not a policy."""
    if not isinstance(name, str) or not name.strip():
        raise PolicyError("'model' must be a non-empty string")
    n = name.strip()
    if n == AUTO:
        return Policy("auto", name=n)
    if m := re.fullmatch(rf"tela-auto@{_NUM}", n):
        return Policy("share", _unit_value(m.group(1), n, "the strong share after '@'"), name=n)
    if m := re.fullmatch(rf"router-([a-z_]+)-{_NUM}", n):
        t = _unit_value(m.group(2), n, "the threshold")
        return Policy("threshold", t, router_kind=m.group(1), name=n)
    if m := re.fullmatch(rf"tela-cheapest@{_NUM}", n):
        return Policy("cheapest", _unit_value(m.group(1), n, "the quality target after '@'"), name=n)
    if m := re.fullmatch(rf"tela-budget@{_NUM}", n):
        return Policy("budget", float(m.group(1)), name=n)
    if n.startswith(("tela-", "router-")):
        raise PolicyError(
            f"model {n!r} looks like a routing policy but is not one; expected tela-auto, tela-auto@<share>, "
            "router-<kind>-<threshold>, tela-cheapest@<quality> or tela-budget@<dollars per 1k requests>"
        )
    return Policy("direct", name=n)


@dataclass
class Decision:
    model: str  # first choice
    chain: list[str]  # first choice, then the fallbacks in order
    score: float | None = None  # strong_win_rate
    threshold: float | None = None
    quality: dict = field(default_factory=dict)  # predicted quality per model


def request_cost(prices: Mapping[str, tuple[float, float]], prompt_tokens: float, max_tokens: float) -> dict:
    """Dollars one request would cost on each model: (input, output) $/1M tokens."""
    return {m: (prompt_tokens * p_in + max_tokens * p_out) / 1e6 for m, (p_in, p_out) in prices.items()}


def decide(
    policy: Policy,
    *,
    quality: Mapping[str, float],
    score: float,
    strong: str,
    weak: str,
    threshold: float,
    share_threshold,
    costs: Mapping[str, float],
    available: Sequence[str],
) -> Decision:
    """The model for one prompt under `policy`, and the fallback chain (next-best by
    predicted quality among `available` upstreams; ties go to the cheaper).

    `threshold` is the calibrated default; `share_threshold(share)` maps a target strong
    share to a threshold through the stored calibration sample.
    """
    avail = [m for m in available if m in quality]
    if policy.kind in ("auto", "share", "threshold"):
        if policy.kind == "share":
            threshold = share_threshold(policy.value)
        elif policy.kind == "threshold":
            threshold = float(policy.value)
        missing = [m for m in (strong, weak) if m not in available]
        if missing:
            raise PolicyError(f"policy {policy.name!r} needs upstream(s) {missing}, which --models does not list")
        to_strong = bool(routing.route_two([score], threshold)[0])
        first = strong if to_strong else weak
    else:
        if not avail:
            raise PolicyError(f"policy {policy.name!r}: no upstream in --models is a model the router knows")
        q = pd.DataFrame([{m: float(quality[m]) for m in avail}])
        prices = {m: float(costs.get(m, 0.0)) for m in avail}
        if policy.kind == "cheapest":
            first = str(routing.cheapest_adequate(q, prices, float(policy.value)).iloc[0])
        else:  # budget: dollars per 1k requests -> per request
            first = str(routing.best_under_budget(q, prices, float(policy.value) / 1000.0).iloc[0])
        threshold = None
    rest = sorted((m for m in avail if m != first), key=lambda m: (-float(quality[m]), float(costs.get(m, 0.0)), m))
    if first not in avail:
        rest = [m for m in rest if m != first]
    return Decision(first, [first, *rest], float(score), threshold, {m: float(quality[m]) for m in quality})


def threshold_for_share_from(scores: np.ndarray | None):
    """`share -> threshold` over a calibration sample's scores (None: no sample stored)."""

    def f(share: float) -> float:
        if scores is None or not len(scores):
            raise PolicyError(
                "this router has no stored calibration sample: tela-auto@<share> is unavailable "
                "(run `tela calibrate` on it)"
            )
        return threshold_for_share(scores, share)[0]

    return f
