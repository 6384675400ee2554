"""SyncPL (issue 12, item 3): judgment trajectories for labelled pairs, the ranking and
consistency rules applied with the label, RSFT on the kept trajectories and DPO on kept against
rejected ones, so the exported checkpoint judges /compare better.

A trajectory is what /compare samples (service.engines.judgment, the same prompts and
constraints): criteria, a rubric per criterion, the scores of both responses in one
presentation order. With the label (the pair's chosen response is A):
- the consistency rule: a pair's trajectories count only when the majority over both orders
  (service.contract.voting.judge_pair) prefers A; a trajectory is kept when it prefers A too, and
  rejected when it does not (it prefers B, or cannot decide);
- the ranking rule: a kept trajectory's criteria are trained in ranked order (the largest score
  gap first), since the first-ranked criterion is the one that decides.
RSFT trains the one kept trajectory with the largest summed gap per pair; DPO pairs it with a
rejected trajectory of the same pair, a trajectory's log-probability being the sum over its
segments (criteria | rubric per criterion | each score), as its probability factorises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.contract.formatting import Message, PromptFormatter
from service.contract.judging import (
    DEFAULT_RUBRIC,
    FALLBACK_CRITERIA,
    SCORE_DIGITS,
    criteria_chat,
    rubric_chat,
)
from service.contract.voting import CriterionScores, Trajectory, judge_pair
from service.engines.base import Critique, CritiqueGenerator, SamplingSpec
from service.engines.config import EngineConfig
from service.engines.judgment import sample_criteria, sample_rubrics, sample_scores, score_chats
from trainer.data.pairs import PreferencePair
from trainer.examples import LmSequence, PairExample, lm_sequence
from trainer.run import Run, base_version, engine_config

PAIR = (0, 1)  # the chosen response is A, the rejected one B
LABEL = "A"


@dataclass(frozen=True)
class JudgeSettings:
    """How trajectories are sampled: as /compare samples them by default."""

    criteria: int = 3
    samples: int = 2
    temperature: float = 0.8
    top_p: float = 0.95
    rubric_tokens: int = 48
    score_temperature: float = 0.0  # /compare's greedy scores; training trajectories sample


@dataclass(frozen=True)
class Judged:
    """One pair's judgment: the sampled criteria and rubrics, and the trajectories (both orders)."""

    criteria: list[list[str]]
    rubrics: list[list[str]]
    trajectories: list[Trajectory]


async def judge_two(
    generator: CritiqueGenerator,
    fmt: PromptFormatter,
    prompt: Any,
    first: str,
    second: str,
    settings: JudgeSettings,
) -> Judged | None:
    """/compare's judgment of `first` (A) against `second` (B) on the service's prompts, or
    None when a judgment prompt does not fit the context."""
    messages = fmt.neutral_messages(prompt)
    texts = [fmt.neutralise(first), fmt.neutralise(second)]
    too_long = False

    async def generate(chats: list[list[Message]], spec: SamplingSpec) -> list[list[Critique]]:
        nonlocal too_long
        ids = [fmt.chat_ids(c, add_generation_prompt=True) for c in chats]
        if too_long or max(len(i) for i in ids) + spec.max_tokens > fmt.max_model_len:
            too_long = True
            return [[Critique("", 0, "length")] * spec.n for _ in ids]
        outs, _ = await generator.generate(ids, [spec] * len(ids))
        return outs

    s = settings
    criteria, _ = await sample_criteria(
        generate, messages, s.criteria, s.samples, s.temperature, s.top_p
    )
    rubrics = await sample_rubrics(
        generate, messages, criteria, s.temperature, s.top_p, s.rubric_tokens
    )
    # Greedy scores are /compare's, read as it reads them: the expected digit beside the digit.
    digits = fmt.digit_ids(SCORE_DIGITS) if s.score_temperature == 0 else None
    scores = await sample_scores(
        generate, messages, texts, [PAIR], criteria, rubrics, s.score_temperature, digits
    )
    return None if too_long else Judged(criteria, rubrics, scores[PAIR])


async def judge_pairs(
    generator: CritiqueGenerator,
    fmt: PromptFormatter,
    pairs: Sequence[PreferencePair],
    settings: JudgeSettings,
) -> list[dict[str, Any] | None]:
    """Every pair's trajectories in both orders, chosen as A (None where a judgment prompt
    does not fit the context), concurrently: the engine batches the pairs' requests."""

    async def one(pair: PreferencePair) -> dict[str, Any] | None:
        judged = await judge_two(generator, fmt, pair.prompt, pair.chosen, pair.rejected, settings)
        if judged is None:
            return None
        return {
            "pair": pair.to_json(),
            "criteria": judged.criteria,
            "rubrics": judged.rubrics,
            "trajectories": [trajectory_json(t) for t in judged.trajectories],
        }

    return list(await asyncio.gather(*(one(p) for p in pairs)))


def trajectory_json(t: Trajectory) -> dict[str, Any]:
    out: dict[str, Any] = {
        "order": t.order,
        "sample": t.sample,
        "scores": [[c.score_a, c.score_b] for c in t.criteria],
    }
    if all(c.expected_a is not None and c.expected_b is not None for c in t.criteria):
        out["expected"] = [[c.expected_a, c.expected_b] for c in t.criteria]
    return out


def trajectories_of(record: dict[str, Any], digits_only: bool = False) -> list[Trajectory]:
    """A record's trajectories, judged by their expected scores where recorded, or by the
    decoded digits alone (`digits_only`)."""
    out = []
    for t in record["trajectories"]:
        s = t["sample"]
        named = zip(record["criteria"][s], record["rubrics"][s], t["scores"], strict=True)
        scores = [CriterionScores(c, r, a, b) for c, r, (a, b) in named]
        if "expected" in t and not digits_only:
            scores = [
                CriterionScores(c.criterion, c.rubric, c.score_a, c.score_b, ea, eb)
                for c, (ea, eb) in zip(scores, t["expected"], strict=True)
            ]
        out.append(Trajectory(t["order"], scores, s))
    return out


def label_rules(record: dict[str, Any]) -> tuple[list[int], list[int], str]:
    """(kept, rejected, the pair's verdict) by the consistency rule with the label: indices
    into the record's trajectories, both empty when the majority does not prefer A."""
    trajectories = trajectories_of(record)
    verdict = judge_pair(trajectories).preference
    if verdict != LABEL:
        return [], [], verdict
    kept = [i for i, t in enumerate(trajectories) if t.preference() == LABEL]
    rejected = [i for i, t in enumerate(trajectories) if t.preference() != LABEL]
    return kept, rejected, verdict


def filter_records(
    records: Sequence[dict[str, Any] | None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each judged record with its best kept trajectory (the largest summed gap toward A) and
    one rejected trajectory, and the counts: how often the base judge already agreed with the
    label (its /compare accuracy on the training pairs, a tie counted half)."""
    kept_records, hits, judged, unfit = [], 0.0, 0, 0
    for rec in records:
        if rec is None:
            unfit += 1
            continue
        judged += 1
        kept, rejected, verdict = label_rules(rec)
        hits += 1.0 if verdict == LABEL else 0.5 if verdict == "tie" else 0.0
        if not kept:
            continue
        trajectories = trajectories_of(rec)
        best = max(kept, key=lambda i: (sum(c.gap for c in trajectories[i].criteria), -i))
        kept_records.append(dict(rec, kept=best, rejected=rejected[0] if rejected else None))
    report = {
        "pairs": judged + unfit,
        "too_long": unfit,
        "kept": len(kept_records),
        "with_rejected": sum(r["rejected"] is not None for r in kept_records),
        "base_judge_accuracy": hits / judged if judged else None,
    }
    return kept_records, report


def segments(
    fmt: PromptFormatter, record: dict[str, Any], index: int, *, ranked: bool, max_len: int
) -> tuple[LmSequence, ...]:
    """A trajectory as critique-head training sequences on the service's judgment prompts:
    its criteria list (ranked: by the ranking rule), each generated rubric, each score."""
    pair = PreferencePair(**record["pair"])
    messages = fmt.neutral_messages(pair.prompt)
    texts = [fmt.neutralise(pair.chosen), fmt.neutralise(pair.rejected)]
    t = trajectories_of(record)[index]
    k = len(t.criteria)

    def seq(chat: list[Message], text: str) -> LmSequence:
        return lm_sequence(fmt, fmt.chat_ids(chat, add_generation_prompt=True), text, max_len)

    out = []
    listed = t.ranked() if ranked else t.criteria
    names = [c.criterion for c in listed]
    if tuple(names) != FALLBACK_CRITERIA[:k]:  # a fallback list was not generated: no target
        out.append(seq(criteria_chat(messages, k), "".join(f"- {c}\n" for c in names)))
    out += [
        seq(rubric_chat(messages, c.criterion), c.rubric)
        for c in t.criteria
        if c.rubric != DEFAULT_RUBRIC
    ]
    chats = score_chats(
        messages,
        texts,
        PAIR,
        t.order,
        [c.criterion for c in t.criteria],
        [c.rubric for c in t.criteria],
    )
    shown = [
        s
        for c in t.criteria
        for s in ((c.score_a, c.score_b) if t.order == "AB" else (c.score_b, c.score_a))
    ]
    out += [seq(chat, str(s)) for chat, s in zip(chats, shown, strict=True)]
    return tuple(out)


def rsft_sequences(
    fmt: PromptFormatter, records: Sequence[dict[str, Any]], max_len: int
) -> list[list[LmSequence]]:
    """Per record, the kept trajectory's segments (the RSFT targets)."""
    return [list(segments(fmt, r, r["kept"], ranked=True, max_len=max_len)) for r in records]


def dpo_trajectories(
    fmt: PromptFormatter, records: Sequence[dict[str, Any]], max_len: int
) -> list[tuple[tuple[LmSequence, ...], tuple[LmSequence, ...]]]:
    """(kept, rejected) trajectories of one pair, as segment tuples."""
    return [
        (
            segments(fmt, r, r["kept"], ranked=True, max_len=max_len),
            segments(fmt, r, r["rejected"], ranked=False, max_len=max_len),
        )
        for r in records
        if r.get("rejected") is not None
    ]


def compare_accuracy(
    records: Sequence[dict[str, Any] | None], digits_only: bool = False
) -> dict[str, Any]:
    """/compare accuracy with the position swap: a pair is right when the verdict over both
    orders prefers its chosen response; a tie (the orders disagree, or neither decides) half.
    Scores are read as /compare reads them by default (expected digits where recorded), and
    "greedy" gives the accuracy by the decoded digits alone beside it."""
    from trainer.evaluate import wilson

    hits, swapped = [], []
    per_category: dict[str, list[float]] = {}
    for rec in records:
        if rec is None:
            continue
        verdict = judge_pair(trajectories_of(rec, digits_only))
        hit = 1.0 if verdict.preference == LABEL else 0.5 if verdict.preference == "tie" else 0.0
        hits.append(hit)
        swapped.append(verdict.position_disagreement)
        per_category.setdefault(str(rec["pair"].get("category", "general")), []).append(hit)
    n = len(hits)
    out: dict[str, Any] = {
        "overall": sum(hits) / n if n else None,
        "pairs": n,
        "ci95": list(wilson(sum(hits), n)),
        "position_consistent": sum(not v for v in swapped) / n if n else None,
        "per_category": {c: sum(v) / len(v) for c, v in sorted(per_category.items())},
    }
    if not digits_only:
        out["greedy"] = compare_accuracy(records, digits_only=True)
    return out


def rsft_examples(
    fmt: PromptFormatter, records: Sequence[dict[str, Any]], max_len: int
) -> list[PairExample]:
    """RSFT: each kept trajectory's segments as critique-head targets (no reward pair)."""
    return [
        PairExample(str(r["pair"].get("category", "general")), None, None, seg)
        for r in records
        for seg in segments(fmt, r, r["kept"], ranked=True, max_len=max_len)
    ]


async def compare_accuracy_of(
    version_dir: Path,
    splits: Mapping[str, Sequence[PreferencePair]],
    settings: JudgeSettings,
    engine_cfg: EngineConfig,
) -> dict[str, dict[str, Any]]:
    """/compare accuracy (position swap) of one checkpoint version on named splits."""
    from trainer.evaluate import open_generator, resolve_checkpoint

    async with open_generator(resolve_checkpoint(version_dir), engine_cfg) as (generator, fmt):
        return {
            name: compare_accuracy(await judge_pairs(generator, fmt, part, settings))
            for name, part in splits.items()
        }


def compare_table(results: Mapping[str, Mapping[str, dict[str, Any]]]) -> str:
    """compare.json as a markdown table: per version and split, both readings of the scores."""
    rows = [
        "| model | split | pairs | /compare accuracy [95% CI] | position-consistent | "
        "by greedy digits [95% CI] | position-consistent |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def cells(acc: dict[str, Any]) -> str:
        lo, hi = acc["ci95"]
        overall, consistent = acc["overall"], acc["position_consistent"]
        return (
            (f"{overall:.3f} [{lo:.2f}, {hi:.2f}]" if overall is not None else "-")
            + " | "
            + (f"{consistent:.2f}" if consistent is not None else "-")
        )

    for label, by_split in results.items():
        for name, acc in by_split.items():
            rows.append(
                f"| {label} | {name} | {acc['pairs']} | {cells(acc)} | {cells(acc['greedy'])} |"
            )
    return "\n".join(rows) + "\n"


async def compare_report(
    run: Run, trained: Path, splits: Mapping[str, Sequence[PreferencePair]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """/compare accuracy of the trained version and of the base on each split, judged as a
    default /compare request is (one trajectory per order), written to eval/compare.json and a
    markdown table and compare.png beside the reward report."""
    from trainer.critic_plots import compare_panels, plot_panels

    versions = {"trained": trained, "base": base_version(run).path}
    s, c = run.cfg.sampling, run.cfg.syncpl
    settings = JudgeSettings(c.criteria, 1, s.temperature, s.top_p, c.rubric_tokens)
    out = {
        label: await compare_accuracy_of(path, splits, settings, engine_config(run))
        for label, path in versions.items()
    }
    folder = run.path("eval")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    (folder / "compare.md").write_text(compare_table(out))
    plot_panels(compare_panels(out), folder / "compare.png", chance=0.5)
    return out


async def judge_stage(run: Run) -> dict[str, Any]:
    """The judge stage (trainer.stages): trajectories of every training pair from the base
    model, written with the kept ones and the label rules' report."""
    from trainer.data.load import read_jsonl, write_json_lines
    from trainer.evaluate import open_generator

    s, c = run.cfg.sampling, run.cfg.syncpl
    settings = JudgeSettings(
        c.criteria, c.samples, s.temperature, s.top_p, c.rubric_tokens, c.score_temperature
    )
    pairs = read_jsonl(run.path("train.jsonl"))
    async with open_generator(base_version(run), engine_config(run)) as (generator, fmt):
        records = await judge_pairs(generator, fmt, pairs, settings)
    write_json_lines([r for r in records if r is not None], run.path("trajectories.jsonl"))
    kept, report = filter_records(records)
    write_json_lines(kept, run.path("judged.jsonl"))
    return report
