"""/compare: SyncPL's criteria judgment of every pair of 2-4 responses, in both orders.

One generator call samples the criteria (`samples` trajectories; skipped when the request gives
them), one writes a rubric per criterion and trajectory, one decodes every score under the 1-5
constraint (each pair, both orders, each trajectory and criterion, A and B), read by default as
the expected digit under the judge's probabilities: the trajectories of
service.engines.judgment, which the trainer's SyncPL stage samples too. The voting rules are
service.contract.voting's; beside each verdict, the reward head's Bradley-Terry probability
sigmoid(r_A - r_B) from m = 0 rewards scored through the batcher like /score. Identical
responses are a tie without generation (GRPO groups repeat responses). The whole call runs on
one model version and counts once for the drain."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.contract.formatting import Message
from service.contract.judging import SCORE_DIGITS
from service.contract.options import ScoreOptions
from service.contract.voting import (
    PairVerdict,
    Trajectory,
    identical_pair,
    judge_pair,
    ranking,
)
from service.engines.base import Critique, SamplingSpec
from service.engines.judgment import Generate, sample_criteria, sample_rubrics, sample_scores
from service.model.runtime import ModelRuntime
from service.scoring.core import RewardService
from service.scoring.errors import InvalidRequest


@dataclass(frozen=True)
class CompareOptions:
    num_criteria: int
    samples: int
    criteria: tuple[str, ...] | None  # given by the request: not generated
    temperature: float
    top_p: float
    rubric_tokens: int
    score_reading: Literal["expected", "greedy"] = "expected"


@dataclass(frozen=True)
class PairResult:
    a: int
    b: int
    verdict: PairVerdict
    trajectories: list[Trajectory]
    bt_p_a: float
    identical: bool


@dataclass
class CompareOutcome:
    model_version: str
    pairs: list[PairResult]
    ranking: list[int] | None
    rewards: list[float]
    judge_tokens: int = 0
    warnings: list[str] = field(default_factory=list)


def response_field(i: int, name: str) -> str:
    """/compare's names for its m = 0 scoring items: the prompt, and responses[i]."""
    return "prompt" if name == "prompt" else f"responses[{i}]"


def sigmoid(x: float) -> float:
    """Without overflow for any finite reward difference."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class Comparer:
    """Runs /compare requests on the service's engines."""

    def __init__(self, service: RewardService) -> None:
        self.service = service

    async def compare(
        self,
        prompt: str | Sequence[Message],
        responses: list[str],
        opts: CompareOptions,
        runtime: ModelRuntime,
        deadline: float | None = None,
    ) -> CompareOutcome:
        with self.service.tracked(), runtime.use():
            return await self._compare(prompt, responses, opts, runtime, deadline)

    async def _compare(
        self,
        prompt: str | Sequence[Message],
        responses: list[str],
        opts: CompareOptions,
        runtime: ModelRuntime,
        deadline: float | None,
    ) -> CompareOutcome:
        fmt = runtime.formatter
        # m = 0 rewards through the batcher, for the Bradley-Terry probability beside each pair;
        # it checks every response's length first, and names them as this request does.
        m0 = ScoreOptions(0, opts.temperature, opts.top_p, 1)
        scored = await self.service.score(
            [(prompt, r) for r in responses], m0, deadline, runtime, field=response_field
        )
        messages = fmt.neutral_messages(prompt)
        texts = [fmt.neutralise(r) for r in responses]
        rewards = [s.result.reward for s in scored.items]
        out = CompareOutcome(runtime.model_version, [], None, rewards, warnings=scored.warnings)
        pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
        distinct = [(i, j) for i, j in pairs if texts[i].strip() != texts[j].strip()]
        scores: dict[tuple[int, int], list[Trajectory]] = {}
        if distinct:  # only identical pairs: nothing to judge, no generation
            criteria = await self._criteria(messages, opts, runtime, deadline, out)
            generate = self._generator(runtime, deadline, out)
            rubrics = await sample_rubrics(
                generate, messages, criteria, opts.temperature, opts.top_p, opts.rubric_tokens
            )
            digits = fmt.digit_ids(SCORE_DIGITS) if opts.score_reading == "expected" else None
            scores = await sample_scores(
                generate, messages, texts, distinct, criteria, rubrics, digit_ids=digits
            )
            if opts.score_reading == "expected" and any(
                c.expected_a is None for ts in scores.values() for t in ts for c in t.criteria
            ):
                out.warnings.append(
                    "the judge's probabilities of the digits 1-5 could not be read for some "
                    "scores; those trajectories are judged by the digits decoded"
                )
        metrics = self.service.metrics
        verdicts: dict[tuple[int, int], PairVerdict] = {}
        for i, j in pairs:
            bt = sigmoid(rewards[i] - rewards[j])
            if (i, j) not in scores:
                verdicts[(i, j)] = identical_pair()
                out.pairs.append(PairResult(i, j, verdicts[(i, j)], [], bt, identical=True))
                metrics.compare_pairs.labels("identical").inc()
                continue
            trajectories = scores[(i, j)]
            verdict = judge_pair(trajectories)
            verdicts[(i, j)] = verdict
            out.pairs.append(PairResult(i, j, verdict, trajectories, bt, identical=False))
            metrics.compare_pairs.labels(verdict.preference).inc()
            for vote, count in verdict.votes.items():
                metrics.compare_votes.labels(vote).inc(count)
            if verdict.position_disagreement:
                metrics.compare_position_disagreements.inc()
        if len(texts) > 2:
            out.ranking = ranking(len(texts), verdicts)
        return out

    async def _generate(
        self,
        runtime: ModelRuntime,
        chats: list[list[Message]],
        spec: SamplingSpec,
        deadline: float | None,
        out: CompareOutcome,
    ) -> list[list[Critique]]:
        if not chats:
            return []
        self.service.admission.admit(1)  # judge calls bypass the queue: refuse them under load
        fmt = runtime.formatter
        ids = await asyncio.to_thread(
            lambda: [fmt.chat_ids(c, add_generation_prompt=True) for c in chats]
        )
        longest = max(len(i) for i in ids)
        if longest + spec.max_tokens > fmt.max_model_len:
            raise InvalidRequest(
                "responses",
                f"a judgment prompt needs {longest + spec.max_tokens} tokens; the model "
                f"context is {fmt.max_model_len} (shorten the responses or the prompt)",
            )
        outs, _ = await self.service.within_deadline(
            runtime.generator.generate(ids, [spec] * len(ids)), deadline, "the judgment was"
        )
        out.judge_tokens += sum(c.num_tokens for row in outs for c in row)
        return outs

    def _generator(
        self, runtime: ModelRuntime, deadline: float | None, out: CompareOutcome
    ) -> Generate:
        async def generate(chats: list[list[Message]], spec: SamplingSpec) -> list[list[Critique]]:
            return await self._generate(runtime, chats, spec, deadline, out)

        return generate

    async def _criteria(
        self,
        messages: list[Message],
        opts: CompareOptions,
        runtime: ModelRuntime,
        deadline: float | None,
        out: CompareOutcome,
    ) -> list[list[str]]:
        """The criteria of each trajectory."""
        if opts.criteria is not None:
            return [list(opts.criteria)] * opts.samples
        criteria, warnings = await sample_criteria(
            self._generator(runtime, deadline, out),
            messages,
            opts.num_criteria,
            opts.samples,
            opts.temperature,
            opts.top_p,
        )
        out.warnings += warnings
        return criteria
