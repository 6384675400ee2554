"""The critique-revision loop of /refine (CTRL's test-time scaling): critique the current best
response, ask the policy for revisions conditioned on that critique, score each revision with
critique-conditioned rewards through the same micro-batcher as /score, keep the best, repeat.

A whole refine runs on one model version and counts once for the drain; every round checks the
deadline, goes through admission (429) and the same request limits as /score."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.checkpoint.critique_format import StructuredCritique
from service.checkpoint.critique_format import parse as parse_critique
from service.contract.formatting import InputTooLongError, Message, normalize_prompt
from service.contract.options import ScoreOptions
from service.contract.revision import revision_messages
from service.engines.base import Critique
from service.engines.chat_endpoint import PolicyFailure, RevisionSpec
from service.model.runtime import ModelRuntime
from service.scoring.core import FieldNamer, RewardService, item_field
from service.scoring.policy import Policy

StopRule = Literal["verdict", "no_improvement", "never"]
StopReason = Literal["verdict", "no_improvement", "rounds", "no_revision"]


@dataclass(frozen=True)
class RefineOptions:
    rounds: int
    candidates: int
    stop: StopRule
    scoring: ScoreOptions  # structured critiques, m >= 1
    revision: RevisionSpec


@dataclass(frozen=True)
class Scored:
    """One response with its critique-conditioned reward."""

    response: str
    reward: float
    critique_rewards: list[float]
    critiques: list[StructuredCritique]
    cached: bool

    @property
    def judged_correct(self) -> bool:
        """A strict majority of its critiques' verdicts say Correct."""
        votes = sum(c.verdict == "Correct" for c in self.critiques)
        return votes * 2 > len(self.critiques)

    def critique_to_act_on(self, attempt: int = 0) -> StructuredCritique:
        """The critique the policy revises with: the first that found the response wrong; on
        the `attempt`-th round in a row on the same best response, the next such one (cycling),
        so a round that did not help is not repeated with the same critique."""
        wrong = [c for c in self.critiques if c.verdict == "Incorrect"]
        pool = wrong or self.critiques
        return pool[attempt % len(pool)]


@dataclass(frozen=True)
class RefineRound:
    round: int
    critique: StructuredCritique  # the critique of the best so far that drove the revisions
    candidates: list[Scored]
    improved: bool


@dataclass
class RefineUsage:
    prompt_tokens: int = 0
    critique_tokens: int = 0
    revision_tokens: int = 0


@dataclass
class RefineOutcome:
    model_version: str
    original: Scored
    rounds: list[RefineRound]
    best: Scored
    best_round: int
    stop_reason: StopReason
    usage: RefineUsage = field(default_factory=RefineUsage)
    warnings: list[str] = field(default_factory=list)


class Refiner:
    """Runs /refine requests on the service's engines, batcher and cache."""

    def __init__(self, service: RewardService) -> None:
        self.service = service

    async def refine(
        self,
        prompt: str | Sequence[Message],
        response: str,
        opts: RefineOptions,
        policy: Policy,
        runtime: ModelRuntime,
        deadline: float | None = None,
    ) -> RefineOutcome:
        with self.service.tracked(), runtime.use():
            return await self._refine(prompt, response, opts, policy, runtime, deadline)

    async def _refine(
        self,
        prompt: str | Sequence[Message],
        response: str,
        opts: RefineOptions,
        policy: Policy,
        runtime: ModelRuntime,
        deadline: float | None,
    ) -> RefineOutcome:
        metrics = self.service.metrics
        usage = RefineUsage()
        warnings: list[str] = []
        # Errors about the original name the request's own fields, prompt and response.
        first = await self._score(
            prompt, [response], opts, runtime, deadline, usage, warnings, field=lambda _, f: f
        )
        original = first[0]
        best, best_round = original, 0
        rounds: list[RefineRound] = []
        reason: StopReason = "rounds"
        messages = normalize_prompt(prompt)
        for number in range(1, opts.rounds + 1):
            if opts.stop == "verdict" and best.judged_correct:
                reason = "verdict"
                break
            critique = best.critique_to_act_on(number - 1 - best_round)
            texts = await self._revise(
                policy, revision_messages(messages, best.response, critique.text), opts, deadline
            )
            usage.revision_tokens += sum(t.num_tokens for t in texts)
            written = [t.text for t in texts if t.text.strip()]
            fitting = await asyncio.to_thread(self._fitting, runtime, prompt, written, opts)
            metrics.refine_rounds.inc()
            if len(fitting) < len(written):
                warnings.append(
                    f"round {number}: a revision too long for the model context was dropped"
                )
            if not fitting:
                rounds.append(RefineRound(number, critique, [], improved=False))
                reason = "no_revision"
                break
            scored = await self._score(prompt, fitting, opts, runtime, deadline, usage, warnings)
            top = max(scored, key=lambda s: s.reward)
            improved = top.reward > best.reward
            rounds.append(RefineRound(number, critique, scored, improved))
            if improved:
                best, best_round = top, number
            elif opts.stop == "no_improvement":
                reason = "no_improvement"
                break
        metrics.refine_stops.labels(reason).inc()
        metrics.refine_gain.observe(best.reward - original.reward)
        return RefineOutcome(
            runtime.model_version, original, rounds, best, best_round, reason, usage, warnings
        )

    async def _revise(
        self,
        policy: Policy,
        messages: list[Message],
        opts: RefineOptions,
        deadline: float | None,
    ) -> list[Critique]:
        # A revision is generator work outside the batcher's queue: refuse it under the same
        # overload signal, and bound it by the request's deadline.
        self.service.admission.admit(opts.revision.n)
        try:
            return await self.service.within_deadline(
                policy.revise(messages, opts.revision), deadline, "the revision was"
            )
        except PolicyFailure:
            self.service.metrics.policy_failures.inc()
            raise

    @staticmethod
    def _fitting(
        runtime: ModelRuntime,
        prompt: str | Sequence[Message],
        texts: list[str],
        opts: RefineOptions,
    ) -> list[str]:
        """The revisions that fit the model context with their critiques (the others would fail
        the whole round's scoring)."""
        out = []
        s = opts.scoring
        for text in texts:
            try:
                runtime.formatter.encode_item(
                    prompt, text, s.max_critique_tokens, s.num_critiques, s.truncate_prompt
                )
            except InputTooLongError:
                continue
            out.append(text)
        return out

    async def _score(
        self,
        prompt: str | Sequence[Message],
        responses: list[str],
        opts: RefineOptions,
        runtime: ModelRuntime,
        deadline: float | None,
        usage: RefineUsage,
        warnings: list[str],
        field: FieldNamer = item_field,
    ) -> list[Scored]:
        outcome = await self.service.score(
            [(prompt, r) for r in responses], opts.scoring, deadline, runtime, field
        )
        for w in outcome.warnings:
            if w not in warnings:
                warnings.append(w)
        out = []
        for text, item in zip(responses, outcome.items, strict=True):
            usage.prompt_tokens += item.result.prompt_tokens
            usage.critique_tokens += item.result.critique_tokens
            out.append(
                Scored(
                    text,
                    item.result.reward,
                    list(item.result.critique_rewards),
                    [parse_critique(c.text) for c in item.result.critiques],
                    item.cached,
                )
            )
        return out
