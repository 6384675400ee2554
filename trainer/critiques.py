"""Critique sampling, judge scores and refinement, on the service's own critique generator.

Every call goes through `CritiqueGenerator.generate` (one engine request per prompt, n samples),
so the trainer samples critiques exactly as the service does at inference. Judge scores are
decoded in a second request constrained to 1-10 (a 135M model almost never writes a parseable
score on its own; see ../shared/VLLM_CPU_FACTS.md)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.checkpoint.critique_format import (
    VERDICT_MAX_TOKENS,
    VERDICT_REGEX,
    parse_verdict,
    verdict_prompt,
    with_verdict,
)
from service.contract.formatting import PromptFormatter, conversation_text, normalize_prompt
from service.engines.base import CritiqueGenerator, SamplingSpec
from trainer.config import RefineConfig, SamplingConfig
from trainer.data.pairs import PreferencePair
from trainer.examples import end_of_turn_ids
from trainer.judge import SCORE_PROMPT, SCORE_REGEX, parse_score
from trainer.selection import Scored, top_k
from trainer.verify.teacher import teacher_critique

if TYPE_CHECKING:
    from trainer.verify.verdict import Verdict as Finding


def score_spec(temperature: float) -> SamplingSpec:
    """One judge score, 1-10 only ("10" may be one or two tokens). Sampled, not greedy: the
    score is part of the judge's sample, like the critique (greedy decoding of a small model
    gives nearly every critique the same score, and the instance filter then keeps nothing)."""
    return SamplingSpec(n=1, temperature=temperature, top_p=1.0, max_tokens=3, regex=SCORE_REGEX)


META_SYSTEM = "You grade reviews of AI assistant answers for accuracy and usefulness."
META_USER = (
    "[Conversation]\n{conversation}\n\n[Response]\n{response}\n\n[Review]\n{critique}\n\n"
    "Is this review correct about the response, and does it name the real problems? "
    "Grade it from 1 (wrong or useless) to 10 (correct and precise)."
)
SUMMARY_SYSTEM = "You write short, precise reviews of AI assistant answers."
SUMMARY_USER = (
    "[Conversation]\n{conversation}\n\n[Response]\n{response}\n\n[Reviews]\n{reviews}\n\n"
    "Write one short review of the response that keeps the points these reviews get right "
    "and drops the ones that are wrong, then say whether the response is good."
)


@dataclass
class SampleStats:
    """Counts reported by the sampling stage (unparseable scores are dropped, never hidden)."""

    critiques: int = 0
    unparseable: int = 0
    grounded_pairs: int = 0
    hint_echoes: int = 0
    teacher: int = 0  # training critiques the verifier wrote (sampling.teacher)
    per_category: dict[str, dict[str, int]] = field(default_factory=dict)


# Room the judge step adds after a critique: SCORE_PROMPT and the score itself.
JUDGE_ROOM = 16


def _item(
    fmt: PromptFormatter, prompt: Any, response: str, max_tokens: int, hint: str | None = None
) -> list[int]:
    return fmt.encode_item(
        prompt, response, max_tokens + JUDGE_ROOM, 1, truncate_prompt=True, hint=hint
    ).critique_prompt


def fits(fmt: PromptFormatter, ids: list[int], max_tokens: int) -> bool:
    return len(ids) + max_tokens <= fmt.max_model_len


def verdict_spec() -> SamplingSpec:
    """The verdict that closes a structured critique, constrained to Correct|Incorrect; greedy,
    since it must state what the critique before it concluded."""
    return SamplingSpec(
        n=1, temperature=0.0, top_p=1.0, max_tokens=VERDICT_MAX_TOKENS, regex=VERDICT_REGEX
    )


async def verify_pairs(pairs: Sequence[PreferencePair]) -> list[dict[str, Finding] | None]:
    """The verifier's verdict on both responses of each pair that carries a check (code runs
    in the sandbox, so this runs off the event loop); None for pairs without one."""
    import asyncio

    from trainer.verify.checks import verify

    def run() -> list[dict[str, Finding] | None]:
        out: list[dict[str, Finding] | None] = []
        for p in pairs:
            if p.check is None:
                out.append(None)
                continue
            out.append({side: verify(p.check, getattr(p, side)) for side in SIDES})
        return out

    return await asyncio.to_thread(run)


SIDES = ("chosen", "rejected")
# What a critique that repeats its hint says: the hint block's title and the verifiers' openings.
HINT_ECHO = re.compile(r"reference check|verifier|execution feedback", re.IGNORECASE)


async def sample_and_judge(
    generator: CritiqueGenerator,
    fmt: PromptFormatter,
    pairs: Sequence[PreferencePair],
    cfg: SamplingConfig,
) -> tuple[list[dict[str, Any]], SampleStats]:
    """Training critiques of each pair's chosen and rejected response, and `cfg.plain_critiques`
    critiques sampled exactly as the service samples them (no hint, no verdict).

    With `cfg.teacher`, a pair with a verifier check gets one training critique per response,
    the verifier's finding written as a structured critique, and no hinted sampling.
    Otherwise a pair with a verifier check (the synthetic data) gets grounded critiques: the
    verifier's hint goes into the sampling prompt, the structured critique's verdict is decoded under a
    Correct|Incorrect constraint, and the record carries the verifier's verdicts for the
    grounded filter. A pair without one (a loaded dataset) gets critiques judged 1-10 by the
    model, for the judge-score filter. Returns one record per pair:
    {"pair", "chosen": [{"text", "score" | "verdict"}], "rejected": [...], "verifier",
    "chosen_plain": [text], "rejected_plain": [text]}; unparseable judge scores are dropped
    and counted."""
    verdicts = await verify_pairs(pairs) if cfg.grounded else [None] * len(pairs)
    responses = [(i, p, side) for i, p in enumerate(pairs) for side in SIDES]
    # The service's own critique input: no hint, the inference budget.
    plain_prompts = [
        fmt.encode_item(
            p.prompt, getattr(p, side), cfg.max_tokens + JUDGE_ROOM, 1, truncate_prompt=True
        ).critique_prompt
        for _i, p, side in responses
    ]
    prompts, specs, asked = [], [], []
    # A grounded critique's free text leaves room for its verdict line, so the whole critique
    # fits the checkpoint's critique budget (sampling.max_tokens) as the service decodes it.
    free = max(cfg.max_tokens - len(fmt.encode(verdict_prompt("") + "Incorrect")), 1)
    for k, ((i, p, side), plain_ids) in enumerate(zip(responses, plain_prompts, strict=True)):
        v = verdicts[i]
        if v is None:
            prompts.append(plain_ids)
            specs.append(
                SamplingSpec(cfg.num_critiques, cfg.temperature, cfg.top_p, cfg.max_tokens)
            )
        elif not cfg.teacher:
            prompts.append(_item(fmt, p.prompt, getattr(p, side), cfg.max_tokens, v[side].hint))
            specs.append(SamplingSpec(cfg.num_critiques, cfg.temperature, cfg.top_p, free))
        else:
            continue  # the verifier writes this response's training critique (below)
        asked.append(k)
    critiques: list[list[Any]] = [[] for _ in responses]
    if prompts:
        sent, _ = await generator.generate(prompts, specs)
        for k, cs in zip(asked, sent, strict=True):
            critiques[k] = list(cs)
    # The closing step continues each critique in the un-hinted prompt: the verdict line
    # (grounded; decoded without the hint, so it says what the critique's own text implies,
    # not what the hint said) or "<critique>\nScore (1-10): N" (judged).
    close_prompts, close_specs = [], []
    for (i, _p, _side), ids, cs in zip(responses, plain_prompts, critiques, strict=True):
        grounded = verdicts[i] is not None
        for c in cs:
            tail = verdict_prompt(c.text) if grounded else c.text + SCORE_PROMPT
            close_prompts.append(ids + fmt.encode(tail))
            close_specs.append(verdict_spec() if grounded else score_spec(cfg.temperature))
    closed, _ = (
        await generator.generate(close_prompts, close_specs) if close_prompts else ([], None)
    )
    closing = iter(out[0].text if out else "" for out in closed)

    plain: list[list[str]] = [[] for _ in responses]
    if cfg.plain_critiques > 0:
        plain_spec = SamplingSpec(cfg.plain_critiques, cfg.temperature, cfg.top_p, cfg.max_tokens)
        sampled, _ = await generator.generate(plain_prompts, [plain_spec] * len(plain_prompts))
        plain = [[c.text for c in cs] for cs in sampled]

    stats = SampleStats()
    records: dict[int, dict[str, Any]] = {}
    closing_ids = end_of_turn_ids(fmt) if cfg.teacher else []

    def fits_budget(text: str) -> bool:
        return len(fmt.encode(text)) + len(closing_ids) <= cfg.max_tokens

    for (i, pair, side), cs, extra in zip(responses, critiques, plain, strict=True):
        v = verdicts[i]
        rec = records.setdefault(i, {"pair": pair.to_json(), "chosen": [], "rejected": []})
        if v is not None and side == "chosen":
            stats.grounded_pairs += 1
            rec["verifier"] = {s: {"correct": v[s].correct, "hint": v[s].hint} for s in SIDES}
        rec[f"{side}_plain"] = extra
        cat = stats.per_category.setdefault(pair.category, {"critiques": 0, "unparseable": 0})
        if v is not None and cfg.teacher:
            text = teacher_critique(pair.category, v[side], fits_budget)
            rec[side].append({"text": text, "verdict": parse_verdict(text), "teacher": True})
            stats.teacher += 1
            continue
        for c in cs:
            out = next(closing)
            stats.critiques += 1
            cat["critiques"] += 1
            if v is not None:
                verdict = parse_verdict(out)
                if verdict is None:
                    stats.unparseable += 1
                    cat["unparseable"] += 1
                    continue
                if HINT_ECHO.search(c.text):
                    # It cites the check it was shown; trained without the hint, it would
                    # teach the critic to claim checks it never ran.
                    stats.hint_echoes += 1
                    continue
                rec[side].append({"text": with_verdict(c.text, verdict), "verdict": verdict})
                continue
            score = parse_score(out)
            if score is None:
                stats.unparseable += 1
                cat["unparseable"] += 1
                continue
            rec[side].append({"text": c.text, "score": score})
    return [records[i] for i in range(len(pairs))], stats


def scored(record: dict[str, Any], side: str) -> list[Scored]:
    return [Scored(c["text"], c.get("score")) for c in record[side]]


async def refine(
    generator: CritiqueGenerator | None,
    fmt: PromptFormatter,
    records: Sequence[dict[str, Any]],
    cfg: RefineConfig,
    sampling: SamplingConfig,
    seed: int,
) -> list[dict[str, Any]]:
    """Add "chosen_train" / "rejected_train" (K critique texts each) to every record.

    ranking: the model as meta-judge grades every critique 1-10; the top K are kept.
    summarization: K meta-critiques, each summarising the N critiques in a different order.
    utility: RCO's critique utility (trainer.utility); adds "<side>_cu" and "<side>_cu_pair".
    none: the first K critiques as sampled."""
    jobs = [(r, side) for r in records for side in ("chosen", "rejected")]
    out = [dict(r) for r in records]
    by_id = {id(r): o for r, o in zip(records, out, strict=True)}
    if cfg.method == "none":
        for r, side in jobs:
            by_id[id(r)][f"{side}_train"] = [c["text"] for c in r[side][: cfg.k]]
        return out
    if generator is None:
        raise ValueError(f"refine.method {cfg.method!r} needs the critique generator")
    if cfg.method == "utility":
        from trainer.utility import actor_of, utility_refine

        return await utility_refine(
            generator,
            fmt,
            records,
            k=cfg.k,
            revisions=cfg.revisions,
            max_tokens=cfg.revision_max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            actor=actor_of(cfg.actor),
        )
    if cfg.method == "ranking":
        prompts = [
            _meta_prompt(fmt, r["pair"], r["pair"][side], c["text"])
            for r, side in jobs
            for c in r[side]
        ]
        # A meta prompt longer than the context is not sent; its critique counts as ungraded.
        judge = score_spec(sampling.temperature)
        ok = [fits(fmt, p, judge.max_tokens) for p in prompts]
        sent = [p for p, fit in zip(prompts, ok, strict=True) if fit]
        judged, _ = await generator.generate(sent, [judge] * len(sent))
        answers = iter(judged)
        meta = iter(parse_score(next(answers)[0].text) if fit else None for fit in ok)
        for r, side in jobs:
            crits = scored(r, side)
            grades = [next(meta) for _ in crits]
            best = top_k(crits, grades, cfg.k)
            by_id[id(r)][f"{side}_train"] = [c.text for c in best]
            by_id[id(r)][f"{side}_meta"] = grades
        return out
    rng = random.Random(seed)
    prompts, owners = [], []
    for r, side in jobs:
        texts = [c["text"] for c in r[side]]
        for _ in range(cfg.k):
            order = rng.sample(texts, len(texts))
            prompt = _summary_prompt(fmt, r["pair"], r["pair"][side], order)
            while not fits(fmt, prompt, cfg.max_tokens) and len(order) > 1:
                order = order[:-1]  # too long for the context: summarise fewer critiques
                prompt = _summary_prompt(fmt, r["pair"], r["pair"][side], order)
            prompts.append(prompt)
            owners.append((r, side))
    spec = SamplingSpec(1, sampling.temperature, sampling.top_p, cfg.max_tokens)
    written, _ = await generator.generate(prompts, [spec] * len(prompts))
    for r, side in jobs:
        by_id[id(r)][f"{side}_train"] = []
    for (r, side), outs in zip(owners, written, strict=True):
        by_id[id(r)][f"{side}_train"].append(outs[0].text)
    return out


def _meta_prompt(
    fmt: PromptFormatter, pair: dict[str, Any], response: str, critique: str
) -> list[int]:
    user = META_USER.format(
        conversation=conversation_text(normalize_prompt(pair["prompt"])),
        response=response,
        critique=critique,
    )
    chat = [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": user}]
    return fmt.chat_ids(chat, add_generation_prompt=True) + fmt.encode(SCORE_PROMPT.lstrip())


def _summary_prompt(
    fmt: PromptFormatter, pair: dict[str, Any], response: str, critiques: Sequence[str]
) -> list[int]:
    reviews = "\n".join(f"{i}. {c}" for i, c in enumerate(critiques, 1))
    user = SUMMARY_USER.format(
        conversation=conversation_text(normalize_prompt(pair["prompt"])),
        response=response,
        reviews=reviews,
    )
    chat = [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": user}]
    return fmt.chat_ids(chat, add_generation_prompt=True)
