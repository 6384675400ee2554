"""The pairwise judgment of /compare, defined once (SyncPL's trajectory: criteria from the query,
a 1-5 rubric per criterion, a constrained score for each response), so the trainer's SyncPL
stage (issue 12) samples and trains on these same prompts.

Every prompt is a [system, user] chat for the generator. The criteria are decoded under
`criteria_regex(k)` (k lines "- <criterion>"), a score under `SCORE_REGEX`: a 135M model writes
neither format reliably on its own."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from service.contract.formatting import Message, conversation_text

JUDGE_SYSTEM = "You are a careful, impartial judge of AI assistant answers."
CRITERIA_USER = (
    "List the {k} most important criteria for judging an answer to the conversation below, one "
    "per line, each a few words starting with '- '.\n\n[Conversation]\n{conversation}"
)
RUBRIC_USER = (
    "Write a short 1-5 scoring rubric for the criterion '{criterion}' when judging an answer to "
    "the conversation below: what a 1, a 3 and a 5 mean.\n\n[Conversation]\n{conversation}"
)
SCORE_USER = (
    "[Conversation]\n{conversation}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Criterion: {criterion}\nRubric: {rubric}\n\n"
    "Score Response {which} on this criterion from 1 (worst) to 5 (best). Answer with the digit."
)
SCORE_REGEX = r"[1-5]"
SCORE_DIGITS = "12345"
SCORE_MAX_TOKENS = 2
CRITERION_CHARS = 60
# The rubric of a criterion whose sampled rubric came out empty (shown, and judged by).
DEFAULT_RUBRIC = "1: fails the criterion; 3: partly meets it; 5: fully meets it."
# Criteria used when the generator's list could not be read (reported as a warning).
FALLBACK_CRITERIA = ("correctness", "helpfulness", "clarity")


def criteria_regex(k: int) -> str:
    """k lines '- <criterion>' of letters, spaces and light punctuation."""
    line = rf"- [A-Za-z][A-Za-z ,'/-]{{2,{CRITERION_CHARS - 1}}}\n"
    return f"({line}){{{k}}}"


def criteria_chat(messages: Sequence[Message], k: int) -> list[Message]:
    user = CRITERIA_USER.format(k=k, conversation=conversation_text(messages))
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def rubric_chat(messages: Sequence[Message], criterion: str) -> list[Message]:
    user = RUBRIC_USER.format(criterion=criterion, conversation=conversation_text(messages))
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def score_chat(
    messages: Sequence[Message], a: str, b: str, criterion: str, rubric: str, which: str
) -> list[Message]:
    """The prompt for Response `which` ("A" or "B")'s score; A is the one shown first."""
    user = SCORE_USER.format(
        conversation=conversation_text(messages),
        a=a,
        b=b,
        criterion=criterion,
        rubric=rubric.strip() or DEFAULT_RUBRIC,
        which=which,
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_criteria(text: str, k: int) -> list[str]:
    """Up to k distinct criteria from lines '- <criterion>' (or numbered lines)."""
    out: list[str] = []
    for line in text.splitlines():
        item = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().rstrip(".:")
        item = item[:CRITERION_CHARS].strip()
        if len(item) >= 3 and item.lower() not in (c.lower() for c in out):
            out.append(item)
        if len(out) == k:
            break
    return out


def parse_score(text: str) -> int | None:
    found = re.search(r"[1-5]", text)
    return int(found.group(0)) if found else None


def expected_score(values: Sequence[float]) -> float:
    """The judge's expected score: the digits 1-5 weighted by the softmax of their values (raw
    logits or log-probabilities alike: a constant per step cancels). A small judge's greedy
    digits tie on almost every pair; the expectation keeps the preference the digits round
    away."""
    if len(values) != len(SCORE_DIGITS):
        raise ValueError(f"expected {len(SCORE_DIGITS)} digit values, got {len(values)}")
    top = max(values)
    if not math.isfinite(top):
        raise ValueError("no digit has a finite value")
    weights = [math.exp(v - top) if math.isfinite(v) else 0.0 for v in values]
    return sum(int(d) * w for d, w in zip(SCORE_DIGITS, weights, strict=True)) / sum(weights)
