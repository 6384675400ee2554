"""`critic-rm eval`: pairwise accuracy of checkpoints against m, with the service's engines.

Each response gets max(m) critiques once (the checkpoint's own sampling defaults); the reward
at m is the mean of the first m critiques' rewards (m = 0: no critique), exactly how the service
aggregates. A pair is right when r(chosen) > r(rejected); a tie counts half."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from service.checkpoint.manifest import MANIFEST_FILE
from service.checkpoint.store import CheckpointRoot, CheckpointVersion, load_version
from service.contract.formatting import PromptFormatter
from service.engines.base import Critique, CritiqueGenerator, RewardScorer, SamplingSpec
from service.engines.config import EngineConfig
from service.engines.factory import load_engines, load_formatter, load_generator, load_scorer
from trainer.data.pairs import PreferencePair


def resolve_checkpoint(path: Path) -> CheckpointVersion:
    """A version directory, or a checkpoint root (its `current` version)."""
    if (path / MANIFEST_FILE).is_file():
        return load_version(path, verify_hashes=False)
    return CheckpointRoot(path).resolve(verify_hashes=False)


@asynccontextmanager
async def open_generator(
    version: CheckpointVersion, engine_cfg: EngineConfig
) -> AsyncIterator[tuple[CritiqueGenerator, PromptFormatter]]:
    """A version's critique generator (started off the event loop) and its formatter; the
    engine is shut down on the way out, whatever happens inside."""
    fmt = load_formatter(version, engine_cfg)
    generator = await asyncio.to_thread(load_generator, version, engine_cfg)
    try:
        yield generator, fmt
    finally:
        generator.shutdown()


Z95 = 1.959964


def wilson(hits: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy (ties counted as half a hit)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(
    chosen: Sequence[float], rejected: Sequence[float], categories: Sequence[str]
) -> dict[str, Any]:
    hits: dict[str, list[float]] = defaultdict(list)
    for c, r, cat in zip(chosen, rejected, categories, strict=True):
        hit = 1.0 if c > r else 0.5 if c == r else 0.0
        hits[cat].append(hit)
    every = [h for v in hits.values() for h in v]
    return {
        "overall": statistics.fmean(every) if every else None,
        "pairs": len(every),
        "ci95": list(wilson(sum(every), len(every))),
        "per_category": {c: statistics.fmean(v) for c, v in sorted(hits.items())},
        "per_category_pairs": {c: len(v) for c, v in sorted(hits.items())},
        "per_category_ci95": {c: list(wilson(sum(v), len(v))) for c, v in sorted(hits.items())},
    }


def rewards_at(per_response: list[tuple[float, list[float]]], m: int) -> list[float]:
    """Reward of each response at m critiques: m = 0 uses the no-critique reward."""
    if m == 0:
        return [r0 for r0, _ in per_response]
    return [statistics.fmean(rs[:m]) for _, rs in per_response]


async def score_responses(
    version: CheckpointVersion,
    items: Sequence[tuple[Any, str]],
    max_m: int,
    engine_cfg: EngineConfig,
) -> list[tuple[float, list[float]]]:
    """(reward at m = 0, [reward with critique i for i < max_m]) for each (prompt, response)."""
    fmt = load_formatter(version, engine_cfg)
    sampling = version.manifest.sampling
    tokens = sampling.max_critique_tokens
    enc = [fmt.encode_item(p, y, tokens, max(max_m, 1), truncate_prompt=True) for p, y in items]
    generator: CritiqueGenerator | None = None
    scorer: RewardScorer
    if max_m > 0:
        generator, scorer = await load_engines(version, engine_cfg, fmt)
    else:  # m = 0 only (a standard RM): no critique is sampled, so no generator is started
        scorer = await asyncio.to_thread(load_scorer, version, engine_cfg)
    try:
        critiques: list[list[Critique]] = [[] for _ in items]
        if generator is not None:
            spec = SamplingSpec(max_m, sampling.temperature, sampling.top_p, tokens)
            critiques, _ = await generator.generate(
                [e.critique_prompt for e in enc], [spec] * len(enc)
            )
        # As the service: a reward the fused layout read while generating is not rescored.
        seqs = []
        for e, cs in zip(enc, critiques, strict=True):
            seqs.append(fmt.critique_score_ids(e, None))
            seqs += [fmt.critique_score_ids(e, c.text) for c in cs if c.reward is None]
        flat, _ = await scorer.score(seqs)
    finally:
        if generator is not None:
            generator.shutdown()
        scorer.shutdown()
    result, fresh = [], iter(flat)
    for cs in critiques:
        plain = next(fresh)
        result.append((plain, [next(fresh) if c.reward is None else c.reward for c in cs]))
    return result


async def evaluate(
    checkpoint: Path,
    pairs: Sequence[PreferencePair] | Mapping[str, Sequence[PreferencePair]],
    ms: Sequence[int],
    engine_cfg: EngineConfig,
    stats_pairs: Sequence[PreferencePair] = (),
) -> dict[str, Any]:
    """Accuracy at every m for one checkpoint version directory, on one list of pairs or on
    named splits (scored in one engine start; `by_m` is then the first split's). A standard
    (bt) RM, and the reward head of a SyncPL judge, are only evaluated at m = 0: their reward
    head never saw a critique. With
    `stats_pairs`, also the reward mean/std over their responses at the checkpoint's default m
    (for the manifest)."""
    splits = dict(pairs) if isinstance(pairs, Mapping) else {"test": list(pairs)}
    version = resolve_checkpoint(checkpoint)
    mode = version.manifest.metrics.get("trainer", {}).get("mode")
    plain = mode in ("bt", "syncpl")  # a reward head that never read a critique
    ms = sorted({0} if plain else set(ms))
    default_m = 0 if plain else version.manifest.sampling.num_critiques
    every = [p for part in splits.values() for p in part] + list(stats_pairs)
    items = [(p.prompt, y) for p in every for y in (p.chosen, p.rejected)]
    max_m = max([*ms, default_m if stats_pairs else 0])
    per_response = await score_responses(version, items, max_m, engine_cfg)
    by_split: dict[str, dict[str, Any]] = {}
    pos = 0
    for name, part in splits.items():
        scored = per_response[pos : pos + 2 * len(part)]
        pos += 2 * len(part)
        categories = [p.category for p in part]
        by_m = {}
        for m in ms:
            r = rewards_at(scored, m)
            by_m[str(m)] = accuracy(r[0::2], r[1::2], categories)
        by_split[name] = by_m
    result: dict[str, Any] = {
        "checkpoint": str(version.path),
        "model_version": version.manifest.model_version,
        "mode": mode or "critic",
        "by_m": next(iter(by_split.values())),
        "splits": by_split,
    }
    val = per_response[pos:]
    if val:
        r = rewards_at(val, default_m)
        result["reward_stats"] = {
            "m": default_m,
            "mean": statistics.fmean(r),
            "std": statistics.pstdev(r),
            "responses": len(r),
        }
    return result


def _cell(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f}"


def _table(results: Sequence[dict[str, Any]], labels: Sequence[str], split: str) -> list[str]:
    parts = [r.get("splits", {"test": r["by_m"]}).get(split) for r in results]
    cats = sorted({c for by_m in parts if by_m for a in by_m.values() for c in a["per_category"]})
    head = "| checkpoint | m | pairs | overall [95% CI] | " + " | ".join(cats) + " |"
    rows = [head, "|---|---:|---:|---:|" + "---:|" * len(cats)]
    for label, by_m in zip(labels, parts, strict=True):
        for m, acc in (by_m or {}).items():
            per = " | ".join(
                _cell(acc["per_category"].get(c), None)
                + (
                    f" ({acc.get('per_category_pairs', {}).get(c)})"
                    if c in acc["per_category"]
                    else ""
                )
                for c in cats
            )
            rows.append(
                f"| {label} | {m} | {acc['pairs']} | {_cell(acc['overall'], acc.get('ci95'))} | {per} |"
            )
    return rows


def markdown(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """One table per split: accuracy with its 95% interval overall, per category with its
    number of pairs in brackets."""
    names = list(dict.fromkeys(n for r in results for n in r.get("splits", {"test": 0})))
    out: list[str] = []
    for name in names:
        if len(names) > 1:
            out += [f"### {name}", ""]
        out += [*_table(results, labels, name), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def plot(results: Sequence[dict[str, Any]], labels: Sequence[str], out: Path) -> None:
    """Accuracy against m, one panel per split and one line per checkpoint (with its 95%
    interval as a band); an m = 0-only model is a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for r in results for n in r.get("splits", {"test": 0})))
    all_ms = sorted({int(m) for r in results for m in r["by_m"]})
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), dpi=110, squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        for i, (label, res) in enumerate(zip(labels, results, strict=True)):
            by_m = res.get("splits", {"test": res["by_m"]}).get(name)
            if not by_m:
                continue
            ms = sorted(int(m) for m in by_m if by_m[m]["overall"] is not None)
            if not ms:  # an empty split: nothing to draw
                continue
            acc = [by_m[str(m)]["overall"] for m in ms]
            lo = [by_m[str(m)].get("ci95", [a, a])[0] for m, a in zip(ms, acc, strict=True)]
            hi = [by_m[str(m)].get("ci95", [a, a])[1] for m, a in zip(ms, acc, strict=True)]
            if len(ms) == 1:
                ax.axhline(acc[0], color=f"C{i}", linestyle="--", label=f"{label} (m = {ms[0]})")
            else:
                ax.plot(ms, acc, color=f"C{i}", marker="o", label=label)
                ax.fill_between(ms, lo, hi, color=f"C{i}", alpha=0.12)
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.set_xticks(all_ms, [str(m) for m in all_ms])
        ax.set_xlabel("critiques per response (m)")
        ax.set_ylabel("pairwise accuracy")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(loc="best", fontsize=7)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_report(results: Sequence[dict[str, Any]], labels: Sequence[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = [dict(r, label=lbl) for r, lbl in zip(results, labels, strict=True)]
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(results, labels))
    plot(results, labels, out / "eval.png")
    if len(results) > 1 and results[0].get("mode") != "bt":
        # The targets, against the first checkpoint compared (the standard RM).
        from trainer import targets

        rows = targets.check(results[0], results[1])
        if rows:
            (out / "targets.json").write_text(json.dumps(rows, indent=2) + "\n")
            (out / "targets.md").write_text(targets.markdown(rows))
