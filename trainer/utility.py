"""Refinement by critique utility (RCO, issue 12): a critique is worth what the revision it
drives is worth.

For each response y0 and each of its sampled critiques c_i, the actor (the generator, asked as
/refine's served policy asks it: service.contract.revision) writes M revisions; a judge compares
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

from service.contract.formatting import PromptFormatter, normalize_prompt
from service.contract.revision import revision_messages
from service.contract.voting import judge_pair
from service.engines.base import CritiqueGenerator, SamplingSpec
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
) -> list[dict[str, Any]]:
    """Each record gains, per side, "<side>_cu" (the utility of every critique, in sampled
    order), "<side>_train" (the top K texts by utility) and "<side>_cu_pair" ([preferred,
    dispreferred] or null)."""
    jobs = [
        (n, side, j) for n, r in enumerate(records) for side in SIDES for j in range(len(r[side]))
    ]
    prompts, keep = [], []
    for n, side, j in jobs:
        pair = records[n]["pair"]
        ids = revision_prompt(fmt, pair["prompt"], pair[side], records[n][side][j]["text"])
        fits = len(ids) + 1 <= fmt.max_model_len
        keep.append(fits)
        if fits:
            prompts.append(ids)
    room = [fmt.max_model_len - len(p) for p in prompts]
    specs = [SamplingSpec(revisions, temperature, top_p, min(max_tokens, r)) for r in room]
    written, _ = await generator.generate(prompts, specs) if prompts else ([], None)
    outs = iter(written)
    judgments = []
    for (n, side, _j), fits in zip(jobs, keep, strict=True):
        pair = records[n]["pair"]
        texts = [c.text for c in next(outs)] if fits else []
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
