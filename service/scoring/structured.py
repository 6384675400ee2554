"""Structured critiques at inference: each sampled critique is closed by its verdict line,
decoded in one more generator request under the Correct|Incorrect constraint (a 135M model does
not write the line reliably on its own). The format is service.checkpoint.critique_format's,
the one the trainer samples and trains on."""

from __future__ import annotations

from collections.abc import Sequence

from service.checkpoint.critique_format import (
    VERDICT_MAX_TOKENS,
    VERDICT_REGEX,
    parse_verdict,
    verdict_prompt,
    with_verdict,
)
from service.contract.formatting import PromptFormatter
from service.engines.base import Critique, CritiqueGenerator, EngineStats, SamplingSpec

# Greedy: the verdict must state what the critique before it concluded.
VERDICT_SPEC = SamplingSpec(
    n=1, temperature=0.0, top_p=1.0, max_tokens=VERDICT_MAX_TOKENS, regex=VERDICT_REGEX
)


def verdict_room(formatter: PromptFormatter) -> int:
    """Tokens the longest verdict line takes, left free in a structured critique's budget."""
    return len(formatter.encode(verdict_prompt("") + "Incorrect"))


async def close_with_verdicts(
    generator: CritiqueGenerator,
    formatter: PromptFormatter,
    prompts: Sequence[list[int]],
    critiques: Sequence[Sequence[Critique]],
) -> tuple[list[list[Critique]], EngineStats]:
    """For each item's critique prompt and its critiques: the critiques with their verdict
    line appended (its tokens counted), in one generator call for the whole batch. A verdict
    the constraint still failed to give leaves the free text as it was, without a line."""
    closing = [
        prompt + formatter.encode(verdict_prompt(c.text))
        for prompt, cs in zip(prompts, critiques, strict=True)
        for c in cs
    ]
    if not closing:
        return [list(cs) for cs in critiques], EngineStats()
    outs, stats = await generator.generate(closing, [VERDICT_SPEC] * len(closing))
    verdicts = iter(outs)
    closed: list[list[Critique]] = []
    for cs in critiques:
        row = []
        for c in cs:
            out = next(verdicts)
            verdict = parse_verdict(out[0].text) if out else None
            if verdict is None:
                row.append(c)
                continue
            row.append(
                Critique(
                    with_verdict(c.text, verdict), c.num_tokens + out[0].num_tokens, c.finish_reason
                )
            )
        closed.append(row)
    return closed, stats
