"""The causal-LLM router's prompt: its instruction, template version and a date-free chat rendering."""

from __future__ import annotations

#: bump when INSTRUCTION or the prompt layout changes: a router reads its inputs the way
#: it was trained, so load refuses a template it does not know
TEMPLATE_VERSION = "1"
# Kept short on purpose: it is read for every (prompt, model) example, and every token
# of it is a token less for the request within max_length.
INSTRUCTION = (
    "Predict how well the named model will answer the request below, on a scale from 1 "
    "(wrong or unhelpful) to 5 (fully correct and complete). Reply with one rating token: "
    "[[1]], [[2]], [[3]], [[4]] or [[5]]."
)

#: what chat templates see as "today": Llama-3.x templates print `strftime_now("%d %b %Y")`
#: or `date_string` into the system prompt; this is their own fallback date
CHAT_DATE = (2024, 7, 26)
CHAT_DATE_STRING = "26 Jul 2024"


def render_chat(tokenizer, messages) -> str:
    """The chat-template text of `messages`, with a fixed date.

    Llama-3.x templates print "Today Date: <strftime_now(...)>" unless `date_string` is
    given, so the same prompt would tokenize differently on different days.
    """
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, date_string=CHAT_DATE_STRING
    )


def check_template_deterministic(tokenizer) -> None:
    """Raise if the chat template still writes run-dependent text (a date) with `render_chat`.

    Renders a probe under two different clocks (the templates' `strftime_now` reads the
    module-level `datetime` of transformers' chat-template helper); the texts must match.
    """
    import datetime as dt
    from unittest import mock

    from transformers.utils import chat_template_utils as ctu

    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    texts = []
    for day in (dt.datetime(2001, 2, 3, 4, 5, 6), dt.datetime(2030, 11, 12, 13, 14, 15)):
        clock = type("FixedClock", (dt.datetime,), {"now": classmethod(lambda cls, tz=None, _d=day: _d)})
        with mock.patch.object(ctu, "datetime", clock):
            texts.append(render_chat(tokenizer, probe))
    if texts[0] != texts[1]:
        raise ValueError(
            "causal_llm router: the base model's chat template writes the current date or time even with "
            f"date_string={CHAT_DATE_STRING!r}: its prompts would change from day to day; use prompt_format 'plain'"
        )
