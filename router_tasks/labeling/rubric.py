"""The LLM judge's rubric: a reference-guided 1-5 rating with the verdict as `[[n]]` on the last line.

`RUBRIC_VERSION` is in every judge request's cache key: change it with the wording.
"""

from __future__ import annotations

RUBRIC_VERSION = "ref-guided-1to5-v1"

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


def judge_messages(question: str, reference: str, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": RUBRIC_SYSTEM},
        {"role": "user", "content": RUBRIC_TEXT.format(question=question, reference=reference, answer=answer)},
    ]
