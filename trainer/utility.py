"""Refinement by critique utility (RCO, issue 12): a critique is worth what the revision it
drives is worth.

For each response y0 and each of its sampled critiques c_i, the actor (the generator, asked as
/refine's served policy asks it: service.contract.revision, or the recipe's external
OpenAI-compatible policy, refine.actor) writes M revisions; a judge compares
each revision with y0 in both orders, a win 1, a tie 0.5, a loss 0, and the critique's utility
CU(c_i) is the mean. The judge is the pair's verifier where it has one (the synthetic data's
unit tests, arithmetic checker, constraints): a revision that is right where y0 was wrong wins,
one that breaks a right y0 loses, and equal verdicts tie, whichever order they are read in.
Pairs without a verifier (a loaded dataset) are judged by the /compare judge, the generator
itself on /compare's prompts, in both orders with ties. The top K
critiques by CU are the training critiques (SFT), and each response's best and worst critique,
when their CU differ, form a (preferred, dispreferred) pair for preference training."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from service.contract.formatting import Message, PromptFormatter, normalize_prompt
from service.contract.options import PolicyLimits
from service.contract.revision import revision_messages
from service.contract.voting import judge_pair
from service.engines.base import CritiqueGenerator, SamplingSpec
from service.engines.chat_endpoint import ExternalPolicy, PolicyFailure, RevisionSpec
from trainer.config import ActorConfig
from trainer.run import StageError
from trainer.verify.checks import verify

SIDES = ("chosen", "rejected")


def verifier_judgment(first_correct: bool, second_correct: bool) -> float:
    """The first answer against the second: 1 win, 0.5 tie, 0 loss."""
    if first_correct == second_correct:
        return 0.5
    return 1.0 if first_correct else 0.0


def both_orders(forward: float, backward: float) -> float:
    """A revision's outcome against the original from a judge asked in both orders: the
    forward judgment (revision first) and the backward one (original first), averaged."""
    return (forward + (1.0 - backward)) / 2.0


def critique_utility(outcomes: Sequence[float]) -> float:
    if not outcomes:
        raise ValueError("a critique without revisions has no utility")
    return sum(outcomes) / len(outcomes)


def preference_pair(texts: Sequence[str], utilities: Sequence[float]) -> tuple[str, str] | None:
    """The best and the worst critique of one response, when their utilities differ."""
    if len(texts) < 2:
        return None
    ranked = sorted(range(len(texts)), key=lambda i: -utilities[i])  # stable: sampled order
    hi, lo = ranked[0], ranked[-1]
    return (texts[hi], texts[lo]) if utilities[hi] > utilities[lo] else None


class ExternalActor:
    """refine.actor: revisions from an external OpenAI-compatible endpoint, sent as /refine sends
    them (service.engines.chat_endpoint, with its timeout, size limit and no redirects), at most
    `concurrency` in flight. The URL is the operator's own recipe, so no allow-list applies.
    A failed request stops the stage (it is resumable) instead of counting as a tie."""

    def __init__(self, cfg: ActorConfig) -> None:
        if cfg.url is None:
            raise ValueError("refine.actor.url is not set")
        limits = PolicyLimits(
            (cfg.url,), True, cfg.timeout_s, cfg.max_response_bytes, cfg.api_key_env
        )
        self.policy = ExternalPolicy(cfg.url, cfg.model, limits)
        self.url = cfg.url
        self.concurrency = cfg.concurrency

    async def revise_all(
        self, conversations: Sequence[list[Message]], spec: RevisionSpec
    ) -> list[list[str]]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(messages: list[Message]) -> list[str]:
            async with gate:
                try:
                    return [c.text for c in await self.policy.revise(messages, spec)]
                except PolicyFailure as exc:
                    raise StageError(f"refine.actor.url {self.url}: {exc}") from None

        return list(await asyncio.gather(*(one(m) for m in conversations)))


def actor_of(cfg: ActorConfig) -> ExternalActor | None:
    """The recipe's external actor, or None for the generator."""
    return ExternalActor(cfg) if cfg.url else None


def revision_prompt(fmt: PromptFormatter, prompt: Any, response: str, critique: str) -> list[int]:
    """The actor's input, as /refine's served policy builds it."""
    messages = revision_messages(normalize_prompt(prompt), response, critique)
    return fmt.chat_ids(fmt.neutral_messages(messages), add_generation_prompt=True)


async def _outcomes(
    generator: CritiqueGenerator,
    fmt: PromptFormatter,
    pair: dict[str, Any],
    original: str,
    revisions: Sequence[str],
) -> list[float]:
    """Each revision against the original: by the pair's verifier where it has one, else by
    the /compare judge."""
    if pair.get("check"):
        was = verify(pair["check"], original).correct
        outcomes = []
        for text in revisions:
            revised = verify(pair["check"], text).correct
            forward = verifier_judgment(revised, was)
            outcomes.append(both_orders(forward, verifier_judgment(was, revised)))
        return outcomes
    judged = [model_judgment(generator, fmt, pair["prompt"], t, original) for t in revisions]
    return list(await asyncio.gather(*judged))


async def model_judgment(
    generator: CritiqueGenerator, fmt: PromptFormatter, prompt: Any, revised: str, original: str
) -> float:
    """The /compare judge's outcome for a revision against the original, judged as a default
    /compare request (both orders in one verdict: 1 when it prefers the revision, 0.5 a tie,
    including disagreeing orders, 0 when it prefers the original); a tie when a judgment
    prompt does not fit the context."""
    from trainer.syncpl import JudgeSettings, judge_two

    judged = await judge_two(generator, fmt, prompt, revised, original, JudgeSettings(samples=1))
    if judged is None:
        return 0.5
    return {"A": 1.0, "tie": 0.5, "B": 0.0}[judge_pair(judged.trajectories).preference]


async def utility_refine(
    generator: CritiqueGenerator,
    fmt: PromptFormatter,
    records: Sequence[dict[str, Any]],
    *,
    k: int,
    revisions: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    actor: ExternalActor | None = None,
) -> list[dict[str, Any]]:
    """Each record gains, per side, "<side>_cu" (the utility of every critique, in sampled
    order), "<side>_train" (the top K texts by utility) and "<side>_cu_pair" ([preferred,
    dispreferred] or null). The revisions are the generator's, or `actor`'s when given."""
    jobs = [
        (n, side, j) for n, r in enumerate(records) for side in SIDES for j in range(len(r[side]))
    ]
    items = [
        (records[n]["pair"]["prompt"], records[n]["pair"][side], records[n][side][j]["text"])
        for n, side, j in jobs
    ]
    written = await revisions_of(
        generator, fmt, items, RevisionSpec(revisions, temperature, top_p, max_tokens), actor
    )
    judgments = []
    for (n, side, _j), texts in zip(jobs, written, strict=True):
        pair = records[n]["pair"]
        judgments.append(_outcomes(generator, fmt, pair, pair[side], texts))
    cu: dict[tuple[int, str], list[float]] = {}
    for (n, side, _j), outcomes in zip(jobs, await asyncio.gather(*judgments), strict=True):
        # A critique whose revision prompt does not fit the context drives no revision: a tie.
        cu.setdefault((n, side), []).append(critique_utility(outcomes) if outcomes else 0.5)
    out = []
    for n, r in enumerate(records):
        rec = dict(r)
        for side in SIDES:
            texts = [c["text"] for c in r[side]]
            utilities = cu.get((n, side), [])
            ranked = sorted(range(len(texts)), key=lambda i: -utilities[i])
            rec[f"{side}_cu"] = utilities
            rec[f"{side}_train"] = [texts[i] for i in ranked[:k]]
            best = preference_pair(texts, utilities)
            rec[f"{side}_cu_pair"] = list(best) if best is not None else None
        out.append(rec)
    return out


async def revisions_of(
    generator: CritiqueGenerator,
    fmt: PromptFormatter,
    items: Sequence[tuple[Any, str, str]],
    spec: RevisionSpec,
    actor: ExternalActor | None,
) -> list[list[str]]:
    """spec.n revisions of each (prompt, response, critique); none where the generator's
    revision prompt does not fit its context (an external actor has its own context)."""
    if actor is not None:
        conversations = [revision_messages(normalize_prompt(x), y, z) for x, y, z in items]
        return await actor.revise_all(conversations, spec)
    prompts = [revision_prompt(fmt, x, y, z) for x, y, z in items]
    fits = [len(ids) + 1 <= fmt.max_model_len for ids in prompts]
    asked = [ids for ids, ok in zip(prompts, fits, strict=True) if ok]
    specs = [
        SamplingSpec(
            spec.n, spec.temperature, spec.top_p, min(spec.max_tokens, fmt.max_model_len - len(ids))
        )
        for ids in asked
    ]
    written, _ = await generator.generate(asked, specs) if asked else ([], None)
    outs = iter(written)
    return [[c.text for c in next(outs)] if ok else [] for ok in fits]
