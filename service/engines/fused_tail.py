"""The fused layout's vLLM logits processor: once a critique ends (it samples the end of turn, or
reaches its token budget), force the rest of the tail [end of turn, reward token R, T], so the
step that samples T runs the model on R, and T's raw logit there (reward_logit_model) is the
reward of [critique prompt; z; end of turn; R]: checkpoint format 2's reward, read from the
critique's own KV in a few decode steps instead of a re-prefill.

vLLM loads the class by name in the engine process (engine arg ``logits_processors``); a
request opts in through ``SamplingParams.extra_args[TAIL_KEY]``. The raw logits are copied
before any logits processor runs, so forcing a token never changes the value read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from service.engines.vllm_plugin import TAIL_KEY


def forced_token(output_ids: Sequence[int], budget: int, tail: Sequence[int]) -> int | None:
    """The token this step must sample, or None while the critique is free. The tail starts
    where the critique sampled tail[0] (the end of turn) within its budget, else at the budget."""
    n = len(output_ids)
    try:
        # Searched in place: this runs for every request at every decode step.
        start = output_ids.index(tail[0], 0, min(n, budget))
    except ValueError:
        if n < budget:
            return None
        start = budget
    step = n - start
    return tail[step] if step < len(tail) else None


class _TailRule:
    """One request's rule (vLLM passes the live list of its output ids)."""

    def __init__(self, budget: int, tail: Sequence[int], banned: Sequence[int]) -> None:
        self.budget = budget
        self.tail = list(tail)
        self.banned = list(banned)

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        token = forced_token(output_ids, self.budget, self.tail)
        if token is None:
            # A free critique never writes the reward token or T: they end a critique.
            logits[self.banned] = float("-inf")
        else:
            logits.fill_(float("-inf"))
            logits[token] = 0.0
        return logits


class FusedTailProcessor(AdapterLogitsProcessor):
    """Applies _TailRule to the requests that carry ``extra_args[TAIL_KEY]``."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        spec = (sampling_params.extra_args or {}).get(TAIL_KEY)
        if spec is not None:
            _parse(spec)

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> _TailRule | None:
        spec = (params.extra_args or {}).get(TAIL_KEY)
        return None if spec is None else _TailRule(*_parse(spec))


def _parse(spec: Any) -> tuple[int, list[int], list[int]]:
    try:
        budget, tail, banned = int(spec["budget"]), list(spec["tail"]), list(spec["banned"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{TAIL_KEY} needs budget, tail and banned: {exc}") from None
    if budget < 0 or len(tail) < 2 or not all(isinstance(t, int) for t in tail + banned):
        raise ValueError(f"{TAIL_KEY}: a budget >= 0 and a tail of 2+ token ids, got {spec!r}")
    return budget, tail, banned
