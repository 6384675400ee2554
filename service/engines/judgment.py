"""SyncPL's judgment trajectories sampled on a generator, defined once for /compare
(service.scoring.compare) and the trainer's SyncPL stage (trainer.syncpl): the criteria of each
trajectory (k lines, constrained), one rubric per criterion, then every response's 1-5 score in
both presentation orders (constrained, greedy). The caller's `generate` wraps the engine with
its own admission, deadline and accounting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from service.contract.formatting import Message
from service.contract.judging import (
    DEFAULT_RUBRIC,
    FALLBACK_CRITERIA,
    SCORE_MAX_TOKENS,
    SCORE_REGEX,
    criteria_chat,
    criteria_regex,
    expected_score,
    parse_criteria,
    parse_score,
    rubric_chat,
    score_chat,
)
from service.contract.voting import CriterionScores, Trajectory
from service.engines.base import Critique, SamplingSpec

# Chats in, `n` completions per chat out (SamplingSpec.n), in order.
Generate = Callable[[list[list[Message]], SamplingSpec], Awaitable[list[list[Critique]]]]


async def sample_criteria(
    generate: Generate,
    messages: list[Message],
    k: int,
    samples: int,
    temperature: float,
    top_p: float,
) -> tuple[list[list[str]], list[str]]:
    """The criteria of each of `samples` trajectories, and warnings. A list that could not be
    read falls back to FALLBACK_CRITERIA (an empty list is never judged by)."""
    spec = SamplingSpec(samples, temperature, top_p, 24 * k, regex=criteria_regex(k))
    outs = await generate([criteria_chat(messages, k)], spec)
    found = [parse_criteria(c.text, k) for c in outs[0]]
    warnings = []
    if any(not f for f in found):
        warnings.append("a sampled criteria list could not be read; default criteria used")
    elif any(len(f) < k for f in found):
        warnings.append(f"a sampled criteria list repeated itself: fewer than {k} criteria")
    return [f or list(FALLBACK_CRITERIA[:k]) for f in found], warnings


async def sample_rubrics(
    generate: Generate,
    messages: list[Message],
    criteria: list[list[str]],
    temperature: float,
    top_p: float,
    max_tokens: int,
) -> list[list[str]]:
    """One rubric per criterion of each trajectory (DEFAULT_RUBRIC where one came out empty)."""
    spec = SamplingSpec(1, temperature, top_p, max_tokens)
    chats = [rubric_chat(messages, c) for cs in criteria for c in cs]
    outs = iter(await generate(chats, spec) if chats else [])
    return [[next(outs)[0].text.strip() or DEFAULT_RUBRIC for _ in cs] for cs in criteria]


def score_chats(
    messages: list[Message],
    texts: Sequence[str],
    pair: tuple[int, int],
    order: str,
    criteria: Sequence[str],
    rubrics: Sequence[str],
) -> list[list[Message]]:
    """The score prompts of one trajectory in one order: per criterion, the first shown
    response's, then the second's."""
    i, j = pair
    first, second = (texts[i], texts[j]) if order == "AB" else (texts[j], texts[i])
    chats = []
    for c, r in zip(criteria, rubrics, strict=True):
        chats += [
            score_chat(messages, first, second, c, r, "A"),
            score_chat(messages, first, second, c, r, "B"),
        ]
    return chats


async def sample_scores(
    generate: Generate,
    messages: list[Message],
    texts: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    criteria: list[list[str]],
    rubrics: list[list[str]],
    temperature: float = 0.0,
    digit_ids: Sequence[int] | None = None,
) -> dict[tuple[int, int], list[Trajectory]]:
    """Every pair's trajectories in both orders (AB: the pair's first response shown first),
    from one constrained call; scores are stored in the pair's orientation. /compare decodes
    scores greedily; the trainer samples them (temperature > 0), as SyncPL expands judgments.
    With `digit_ids` (the tokens of "1".."5"), each score also carries its expected value under
    the judge's digit probabilities, which the voting rules then judge by."""
    plan: list[tuple[tuple[int, int], str, int]] = []  # (pair, order, sample)
    chats: list[list[Message]] = []
    for pair in pairs:
        for order in ("AB", "BA"):
            for s, (cs, rs) in enumerate(zip(criteria, rubrics, strict=True)):
                plan.append((pair, order, s))
                chats += score_chats(messages, texts, pair, order, cs, rs)
    read = tuple(digit_ids or ())
    spec = SamplingSpec(1, temperature, 1.0, SCORE_MAX_TOKENS, regex=SCORE_REGEX, read_ids=read)
    outs = iter(await generate(chats, spec) if chats else [])
    result: dict[tuple[int, int], list[Trajectory]] = {p: [] for p in pairs}
    for pair, order, s in plan:
        judged = []
        for c, r in zip(criteria[s], rubrics[s], strict=True):
            first, second = next(outs)[0], next(outs)[0]
            shown = [parse_score(x.text) or 3 for x in (first, second)]  # constrained: a digit
            expected = [_expected(x) for x in (first, second)]
            if order == "BA":
                shown.reverse()
                expected.reverse()
            ea, eb = expected if None not in expected else (None, None)
            judged.append(CriterionScores(c, r, shown[0], shown[1], ea, eb))
        if any(c.expected_a is None for c in judged):
            # A trajectory is read one way: an expected gap never ranks against a digit gap.
            judged = [c.digits_only() for c in judged]
        result[pair].append(Trajectory(order, judged, s))  # type: ignore[arg-type]
    return result


def _expected(score: Critique) -> float | None:
    """A score's expected digit, where the engine returned the digits' values."""
    if score.first_values is None:
        return None
    try:
        return expected_score(score.first_values)
    except ValueError:
        return None
