"""A team's own traffic, made up for tests (test infrastructure, not product code).

Prompts in five domains at two difficulties, four endpoints of our own naming whose
answers are good with a probability that depends on (model, domain, difficulty), and a
judge that grades what it reads: a good answer 5/5, a bad one 1/5. Everything is served
by `ScriptedOpenAIServer` over real HTTP, so the pipeline runs its real client, cache,
judge and router on it. Which answer is good is a deterministic draw per (model, prompt),
so re-runs see the same world.

The quality is learnable from the prompt text alone (hard prompts read differently from
easy ones, domains use their own words), so a router trained on part of the prompts
must beat random on the rest.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

STRONG = "frontier-xl"
WEAK = "open-small"
OPEN_MODELS = ["open-small", "open-math", "open-code"]
JUDGE = "grader-1"

DOMAINS = {
    "math": (
        ["the sum of two small numbers", "half of a dozen eggs", "ten percent of a price", "the area of a square tile"],
        [
            "the convergence of a power series near its radius",
            "an eigenvalue bound for a symmetric matrix",
            "the number of lattice paths avoiding a diagonal",
            "a closed form for a linear recurrence",
        ],
    ),
    "code": (
        [
            "reversing a short string in Python",
            "the length of a list",
            "printing a greeting in a loop",
            "adding an item to a dictionary",
        ],
        [
            "a lock-free queue with memory reclamation",
            "a cache-oblivious matrix transpose",
            "a parser for a context-sensitive grammar",
            "the amortised cost of a splay tree rotation",
        ],
    ),
    "law": (
        [
            "what a parking ticket is",
            "the age of majority in most countries",
            "what a lease is",
            "who signs a contract",
        ],
        [
            "the conflict of laws in a cross-border insolvency",
            "the doctrine of frustration after a pandemic",
            "liability for autonomous agents under tort law",
            "standing of future generations in climate litigation",
        ],
    ),
    "cooking": (
        ["boiling an egg", "making toast", "washing lettuce", "salting pasta water"],
        [
            "emulsion stability in a hollandaise at altitude",
            "the Maillard reaction kinetics in sous-vide beef",
            "laminated dough hydration for croissants",
            "fermentation control in a sourdough starter",
        ],
    ),
    "history": (
        [
            "the year the Berlin wall fell",
            "who built the pyramids",
            "the first man on the moon",
            "the capital of the Roman empire",
        ],
        [
            "the fiscal causes of the Bourbon collapse",
            "grain prices and the fall of the Western Roman empire",
            "monetary policy of the Song dynasty",
            "the historiography of the Thirty Years War",
        ],
    ),
}
EASY_FORMS = [
    "Quick question: tell me about {t}.",
    "In one line, what about {t}?",
    "Simple please: {t}?",
    "Can you briefly explain {t}?",
    "Short answer about {t}, thanks.",
]
HARD_FORMS = [
    "Give a rigorous, step-by-step analysis of {t}, justifying every assumption.",
    "Write an expert-level treatment of {t} with proofs and edge cases.",
    "Derive and critically evaluate {t} at graduate level, citing the hard cases.",
    "Produce a detailed technical report on {t}, with a formal argument.",
    "Explain {t} in depth for a specialist, covering the subtle failure modes.",
]

#: probability of a good answer by (model, domain or "*", difficulty)
SKILL = {
    STRONG: {"*": {"easy": 0.97, "hard": 0.9}},
    "open-small": {"*": {"easy": 0.9, "hard": 0.08}},
    "open-math": {"math": {"easy": 0.95, "hard": 0.8}, "*": {"easy": 0.75, "hard": 0.1}},
    "open-code": {"code": {"easy": 0.95, "hard": 0.8}, "*": {"easy": 0.75, "hard": 0.1}},
}
PRICES = {STRONG: (10.0, 30.0), "open-small": (0.1, 0.2), "open-math": (0.4, 0.8), "open-code": (0.4, 0.8)}


def make_prompts(n: int, seed: int = 7) -> list[dict]:
    """`n` distinct prompts (about 30% hard), each with its domain as category."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        domain = rng.choice(sorted(DOMAINS))
        hard = rng.random() < 0.3  # a minority of hard prompts, as in real traffic
        topic = rng.choice(DOMAINS[domain][1 if hard else 0])
        form = rng.choice(HARD_FORMS if hard else EASY_FORMS)
        text = form.format(t=topic) + f" (case {rng.randint(1, 40)})"
        if text not in seen:
            seen.add(text)
            out.append({"prompt": text, "category": domain})
    return out


def write_prompts_file(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _facts(prompt: str) -> tuple[str, str]:
    hard = any(form.split("{t}")[0] and prompt.startswith(form.split("{t}")[0]) for form in HARD_FORMS)
    domain = next((d for d, (easy, hard_t) in DOMAINS.items() if any(t in prompt for t in easy + hard_t)), "?")
    return domain, "hard" if hard else "easy"


def good_answer(model: str, prompt: str) -> bool:
    domain, level = _facts(prompt)
    skill = SKILL[model].get(domain, SKILL[model]["*"])[level]
    u = int(hashlib.sha256(f"{model}|{prompt}".encode()).hexdigest()[:12], 16) / 16**12
    return u < skill


def rule(body: dict) -> str:
    """The server's reply to one chat request: an answer, or the judge's verdict."""
    model = body.get("model")
    user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"][-1]
    if model == JUDGE:
        answer = user.split("[Assistant's answer]", 1)[-1]
        return "The answer matches the reference. [[5]]" if "(verdict: sound)" in answer else "It is wrong. [[1]]"
    if model not in SKILL:
        return "unknown model"
    ok = good_answer(model, user)
    return (
        f"{model} says: {'a careful, correct answer' if ok else 'a muddled guess'} "
        f"(verdict: {'sound' if ok else 'flawed'})"
    )


def endpoints(base_url: str, key_env: str) -> tuple[list[dict], dict, dict]:
    """(models, judge, reference) endpoint configs, as a team would write them."""
    models = [
        {
            "name": m,
            "model": m,
            "base_url": base_url,
            "api_key_env": key_env,
            "price_input_per_m": PRICES[m][0],
            "price_output_per_m": PRICES[m][1],
            "max_tokens": 32,
        }
        for m in [STRONG, *OPEN_MODELS]
    ]
    judge = {"name": JUDGE, "model": JUDGE, "base_url": base_url, "api_key_env": key_env, "max_tokens": 32}
    reference = {
        "name": f"{STRONG}-reference",
        "model": STRONG,
        "base_url": base_url,
        "api_key_env": key_env,
        "max_tokens": 48,
    }
    return models, judge, reference
