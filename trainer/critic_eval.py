"""What a critic is for, measured on verifiable pairs (issue 12, item 4), before and after its
training:
- mean critique utility (RCO's CU): each response gets `critiques` critiques, sampled on the
  service's critique prompt with the checkpoint's sampling defaults; each critique drives
  `revisions` revisions on /refine's revision conversation, judged against the response by the
  pair's verifier in both orders with ties (trainer.utility); reported for the wrong responses
  (can a critique fix them?) and the right ones (does it leave them right?);
- the refine fix rate: the share of wrong responses that are right after k critique-revision
  rounds, each round one critique of the latest response and one revision of it, verified.
  This is /refine's loop without its reward-based selection, so it measures the critic and the
  policy (the same generator) alone."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.engines.base import CritiqueGenerator, SamplingSpec
from service.engines.chat_endpoint import RevisionSpec
from service.engines.config import EngineConfig
from trainer.data.pairs import PreferencePair
from trainer.evaluate import wilson
from trainer.utility import ExternalActor, actor_of, revisions_of, utility_refine
from trainer.verify.checks import verify


@dataclass(frozen=True)
class CriticEvalSettings:
    critiques: int = 2  # per response, for the mean CU
    revisions: int = 2  # per critique (RCO's M)
    rounds: int = 2  # critique-revision rounds of the fix rate
    revision_tokens: int = 256


async def critic_metrics(
    generator: CritiqueGenerator,
    fmt: Any,
    pairs: Sequence[PreferencePair],
    *,
    critique_tokens: int,
    temperature: float,
    top_p: float,
    settings: CriticEvalSettings,
    actor: ExternalActor | None = None,
) -> dict[str, Any]:
    """Mean CU and the fix rate after 1..rounds rounds, on the pairs that have a verifier; the
    revisions are the generator's, or `actor`'s when given."""
    pairs = [p for p in pairs if p.check]
    if not pairs:
        return {"pairs": 0}
    spec = SamplingSpec(settings.critiques, temperature, top_p, critique_tokens)
    responses = [(p, side) for p in pairs for side in ("chosen", "rejected")]
    critiques = await _critique(
        generator, fmt, [(p.prompt, getattr(p, s)) for p, s in responses], spec
    )
    records: list[dict[str, Any]] = [
        {"pair": p.to_json(), "chosen": [], "rejected": []} for p in pairs
    ]
    for n, texts in enumerate(critiques):
        records[n // 2][responses[n][1]] = [{"text": t} for t in texts]
    refined = await utility_refine(
        generator,
        fmt,
        records,
        k=1,
        revisions=settings.revisions,
        max_tokens=settings.revision_tokens,
        temperature=temperature,
        top_p=top_p,
        actor=actor,
    )
    cu = {side: [u for r in refined for u in r[f"{side}_cu"]] for side in ("chosen", "rejected")}
    one = SamplingSpec(1, temperature, top_p, critique_tokens)
    current = [p.rejected for p in pairs]
    fixed: dict[str, Any] = {}
    for k in range(1, settings.rounds + 1):
        notes = await _critique(
            generator, fmt, [(p.prompt, y) for p, y in zip(pairs, current, strict=True)], one
        )
        first = [t[0] if t else "" for t in notes]
        current = await _revise(
            generator, fmt, pairs, current, first, spec_for(one, settings), actor
        )
        right = [
            1.0 if verify(p.check or {}, y).correct else 0.0
            for p, y in zip(pairs, current, strict=True)
        ]
        fixed[str(k)] = {
            "rate": statistics.fmean(right),
            "ci95": list(wilson(sum(right), len(right))),
        }
    every = cu["chosen"] + cu["rejected"]
    return {
        "pairs": len(pairs),
        "mean_cu": statistics.fmean(every) if every else None,
        "mean_cu_wrong": statistics.fmean(cu["rejected"]) if cu["rejected"] else None,
        "mean_cu_right": statistics.fmean(cu["chosen"]) if cu["chosen"] else None,
        "critiques": len(every),
        "fix_rate": fixed,
    }


async def _critique(
    generator: CritiqueGenerator, fmt: Any, items: Sequence[tuple[Any, str]], spec: SamplingSpec
) -> list[list[str]]:
    """Critiques of each (prompt, response) on the service's critique prompt; none for one whose
    prompt does not fit the context."""
    prompts = [
        fmt.encode_item(x, y, spec.max_tokens, spec.n, truncate_prompt=True).critique_prompt
        for x, y in items
    ]
    fits = [len(p) + spec.max_tokens <= fmt.max_model_len for p in prompts]
    asked = [p for p, ok in zip(prompts, fits, strict=True) if ok]
    outs = iter((await generator.generate(asked, [spec] * len(asked)))[0] if asked else [])
    return [[c.text for c in next(outs)] if ok else [] for ok in fits]


def spec_for(critique: SamplingSpec, settings: CriticEvalSettings) -> RevisionSpec:
    """A revision's sampling: one, at the critiques' temperature, up to revision_tokens."""
    return RevisionSpec(1, critique.temperature, critique.top_p, settings.revision_tokens)


async def _revise(
    generator: CritiqueGenerator,
    fmt: Any,
    pairs: Sequence[PreferencePair],
    current: Sequence[str],
    notes: Sequence[str],
    spec: RevisionSpec,
    actor: ExternalActor | None,
) -> list[str]:
    """One revision of each response with its critique; the response itself where there is no
    critique or the revision prompt leaves no room."""
    ask = [i for i, z in enumerate(notes) if z]
    items = [(pairs[i].prompt, current[i], notes[i]) for i in ask]
    outs = await revisions_of(generator, fmt, items, spec, actor)
    revised = list(current)
    for i, out in zip(ask, outs, strict=True):
        if out:
            revised[i] = out[0]
    return revised


async def critic_eval(
    version_dir: Path,
    splits: Mapping[str, Sequence[PreferencePair]],
    engine_cfg: EngineConfig,
    settings: CriticEvalSettings,
    actor: ExternalActor | None = None,
) -> dict[str, dict[str, Any]]:
    """critic_metrics of one checkpoint version on named splits, with its sampling defaults."""
    from trainer.evaluate import open_generator, resolve_checkpoint

    version = resolve_checkpoint(version_dir)
    sampling = version.manifest.sampling
    async with open_generator(version, engine_cfg) as (generator, fmt):
        return {
            name: await critic_metrics(
                generator,
                fmt,
                part,
                critique_tokens=sampling.max_critique_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                settings=settings,
                actor=actor,
            )
            for name, part in splits.items()
        }


def write_critic_report(results: Mapping[str, Mapping[str, dict[str, Any]]], folder: Path) -> None:
    """critic.json, a markdown table and critic.png: per version and split, mean CU and the fix
    rates."""
    import json

    from trainer.critic_plots import critic_panels, plot_panels

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "critic.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    rows = [
        "| model | split | pairs | mean CU (wrong / right responses) | fix rate, 1 round | "
        "fix rate, 2 rounds |",
        "|---|---|---:|---|---:|---:|",
    ]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for label, by_split in results.items():
        for name, m in by_split.items():
            rates = []
            for k in ("1", "2"):
                r = m.get("fix_rate", {}).get(k)
                rates.append(
                    "-"
                    if r is None
                    else f"{r['rate']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
                )
            cu = f"{num(m.get('mean_cu'))} ({num(m.get('mean_cu_wrong'))} / {num(m.get('mean_cu_right'))})"
            rows.append(f"| {label} | {name} | {m['pairs']} | {cu} | {rates[0]} | {rates[1]} |")
    (folder / "critic.md").write_text("\n".join(rows) + "\n")
    plot_panels(critic_panels(results), folder / "critic.png")


async def critic_report(
    run: Any, trained: Path, splits: Mapping[str, Sequence[PreferencePair]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """The eval stage's eval.critic: critic_metrics of the trained version and of the base on
    the first eval.critic_pairs of each split, written as eval/critic.{json,md}. Revisions get
    the recipe's refine.revision_max_tokens and actor, so the CU measured is the one training
    used."""
    from trainer.run import base_version, engine_config

    few = {name: part[: run.cfg.eval.critic_pairs] for name, part in splits.items()}
    versions = {"trained": trained, "base": base_version(run).path}
    settings = CriticEvalSettings(revision_tokens=run.cfg.refine.revision_max_tokens)
    actor_cfg = run.cfg.refine.actor
    out = {
        label: await critic_eval(path, few, engine_config(run), settings, actor_of(actor_cfg))
        for label, path in versions.items()
    }
    write_critic_report(out, run.path("eval"))
    return out
