"""`critic-rm eval`: pairwise accuracy of checkpoints against m, with the service's engines.

Each response gets max(m) critiques once (the checkpoint's own sampling defaults); the reward
at m is the mean of the first m critiques' rewards (m = 0: no critique), exactly how the service
aggregates. A pair is right when r(chosen) > r(rejected); a tie counts half."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.checkpoint.manifest import MANIFEST_FILE
from service.checkpoint.store import CheckpointRoot, CheckpointVersion, load_version
from service.engines.base import SamplingSpec
from service.engines.factory import load_engines, load_formatter
from service.settings import Settings
from trainer.data.pairs import PreferencePair


def resolve_checkpoint(path: Path) -> CheckpointVersion:
    """A version directory, or a checkpoint root (its `current` version)."""
    if (path / MANIFEST_FILE).is_file():
        return load_version(path, verify_hashes=False)
    return CheckpointRoot(path).resolve(verify_hashes=False)


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
        "per_category": {c: statistics.fmean(v) for c, v in sorted(hits.items())},
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
    settings: Settings,
) -> list[tuple[float, list[float]]]:
    """(reward at m = 0, [reward with critique i for i < max_m]) for each (prompt, response)."""
    fmt = load_formatter(version, settings)
    sampling = version.manifest.sampling
    tokens = sampling.max_critique_tokens
    enc = [fmt.encode_item(p, y, tokens, max(max_m, 1), truncate_prompt=True) for p, y in items]
    generator, scorer = await load_engines(version, settings)
    try:
        critiques: list[list[str]] = [[] for _ in items]
        if max_m > 0:
            spec = SamplingSpec(max_m, sampling.temperature, sampling.top_p, tokens)
            out, _ = await generator.generate([e.critique_prompt for e in enc], [spec] * len(enc))
            critiques = [[c.text for c in cs] for cs in out]
        seqs = []
        for e, cs in zip(enc, critiques, strict=True):
            seqs.append(fmt.score_ids(e.score_prefix, None))
            seqs += [fmt.score_ids(e.score_prefix, c) for c in cs]
        flat, _ = await scorer.score(seqs)
    finally:
        generator.shutdown()
        scorer.shutdown()
    result, pos = [], 0
    for cs in critiques:
        result.append((flat[pos], flat[pos + 1 : pos + 1 + len(cs)]))
        pos += 1 + len(cs)
    return result


async def evaluate(
    checkpoint: Path,
    pairs: Sequence[PreferencePair],
    ms: Sequence[int],
    settings: Settings,
    stats_pairs: Sequence[PreferencePair] = (),
) -> dict[str, Any]:
    """Accuracy at every m for one checkpoint version directory. A standard (bt) RM is only
    evaluated at m = 0: its reward head never saw a critique. With `stats_pairs`, also the
    reward mean/std over their responses at the checkpoint's default m (for the manifest)."""
    version = resolve_checkpoint(checkpoint)
    mode = version.manifest.metrics.get("trainer", {}).get("mode")
    ms = sorted({0} if mode == "bt" else set(ms))
    default_m = 0 if mode == "bt" else version.manifest.sampling.num_critiques
    every = [*pairs, *stats_pairs]
    items = [(p.prompt, y) for p in every for y in (p.chosen, p.rejected)]
    max_m = max([*ms, default_m if stats_pairs else 0])
    per_response = await score_responses(version, items, max_m, settings)
    test, val = per_response[: 2 * len(pairs)], per_response[2 * len(pairs) :]
    categories = [p.category for p in pairs]
    by_m = {}
    for m in ms:
        r = rewards_at(test, m)
        by_m[str(m)] = accuracy(r[0::2], r[1::2], categories)
    result: dict[str, Any] = {
        "checkpoint": str(version.path),
        "model_version": version.manifest.model_version,
        "mode": mode or "critic",
        "by_m": by_m,
    }
    if val:
        r = rewards_at(val, default_m)
        result["reward_stats"] = {
            "m": default_m,
            "mean": statistics.fmean(r),
            "std": statistics.pstdev(r),
            "responses": len(r),
        }
    return result


def markdown(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    cats = sorted({c for r in results for a in r["by_m"].values() for c in a["per_category"]})
    head = "| checkpoint | m | pairs | overall | " + " | ".join(cats) + " |"
    rule = "|---|---:|---:|---:|" + "---:|" * len(cats)
    rows = [head, rule]
    for label, res in zip(labels, results, strict=True):
        for m, acc in res["by_m"].items():
            per = " | ".join(f"{acc['per_category'].get(c, float('nan')):.3f}" for c in cats)
            rows.append(f"| {label} | {m} | {acc['pairs']} | {acc['overall']:.3f} | {per} |")
    return "\n".join(rows) + "\n"


def plot(results: Sequence[dict[str, Any]], labels: Sequence[str], out: Path) -> None:
    """Accuracy against m, one line per checkpoint; an m = 0-only model is a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_ms = sorted({int(m) for r in results for m in r["by_m"]})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (label, res) in enumerate(zip(labels, results, strict=True)):
        ms = sorted(int(m) for m in res["by_m"])
        acc = [res["by_m"][str(m)]["overall"] for m in ms]
        if len(ms) == 1:
            ax.axhline(acc[0], color=f"C{i}", linestyle="--", label=f"{label} (m = {ms[0]})")
        else:
            ax.plot(ms, acc, color=f"C{i}", marker="o", label=label)
    ax.set_xscale("symlog", base=2, linthresh=1)
    ax.set_xticks(all_ms, [str(m) for m in all_ms])
    ax.set_xlabel("critiques per response (m)")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("Inference-time scaling")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_report(results: Sequence[dict[str, Any]], labels: Sequence[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = [dict(r, label=lbl) for r, lbl in zip(results, labels, strict=True)]
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(results, labels))
    plot(results, labels, out / "eval.png")
