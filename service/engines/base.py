"""The two engine interfaces the batch runner talks to; implementations live beside this file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.contract.options import ScoreOptions


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample the critiques of one item."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    regex: str | None = None  # constrain the output to this regex (the trainer's judge scores)
    # The batch runner closes each critique with a constrained verdict line (engines ignore it).
    structured: bool = False
    # Token ids whose raw values (logits or log-probabilities, the engine's logprobs mode) at
    # the first sampled step come back as Critique.first_values: /compare reads a score's
    # digit distribution there, not only the digit decoded.
    read_ids: tuple[int, ...] = ()

    @classmethod
    def for_options(cls, opts: ScoreOptions, verdict_room: int = 0) -> SamplingSpec:
        """How a scoring request's critiques are sampled. A structured critique's free text
        leaves `verdict_room` tokens of the budget for its verdict line."""
        if opts.structured:
            tokens = max(opts.max_critique_tokens - verdict_room, 1)
            return cls(opts.num_critiques, opts.temperature, opts.top_p, tokens, structured=True)
        return cls(opts.num_critiques, opts.temperature, opts.top_p, opts.max_critique_tokens)


@dataclass(frozen=True)
class Critique:
    """One sampled critique."""

    text: str
    num_tokens: int
    finish_reason: str
    first_values: tuple[float, ...] | None = None  # SamplingSpec.read_ids' values, in order
    # Its reward, where the engine read it while generating (the fused layout); else scored.
    reward: float | None = None
    # The ids that reward was read after (the fused layout), for a parity check on exactly them.
    token_ids: tuple[int, ...] | None = None


@dataclass
class EngineStats:
    """Token counters an engine reports for one call (prefix-cache hits included)."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0


class CritiqueGenerator(Protocol):
    """LM head: samples critiques. One engine request per item with n=m (one prefill)."""

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]: ...

    async def check_health(self) -> None: ...

    def shutdown(self) -> None: ...


class RewardScorer(Protocol):
    """Reward head: the raw reward at the last token of each sequence."""

    async def score(self, sequences: Sequence[list[int]]) -> tuple[list[float], EngineStats]: ...

    async def check_health(self) -> None: ...

    def shutdown(self) -> None: ...
