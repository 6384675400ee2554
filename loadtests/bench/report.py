"""The comparison: a markdown table, the ratio of every path to every other, and the JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence

from loadtests.bench.measure import PathRun, percentile


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def table(runs: Sequence[PathRun]) -> str:
    head = (
        "| path | what | pairs | pairs/s | p50 s | p99 s | CPU-s/pair | prompt tok/pair "
        "| computed tok/pair |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {r.path} | {r.label} | {r.pairs} | {r.pairs_per_s:.3f} | "
        f"{_fmt(percentile(r.latencies_s, 50))} | {_fmt(percentile(r.latencies_s, 99))} | "
        f"{r.cpu_s / r.pairs:.2f} | {r.prompt_tokens / r.pairs:.0f} | "
        f"{r.computed_tokens / r.pairs:.0f} |"
        for r in runs
    ]
    return "\n".join([head, *rows])


def ratios(runs: Sequence[PathRun]) -> dict[str, dict[str, float]]:
    """ratios[row][col] = pairs/s of row over pairs/s of col."""
    return {a.path: {b.path: a.pairs_per_s / b.pairs_per_s for b in runs} for a in runs}


def ratio_table(runs: Sequence[PathRun]) -> str:
    r = ratios(runs)
    names = [x.path for x in runs]
    head = "| pairs/s ratio (row ÷ column) | " + " | ".join(names) + " |"
    sep = "|---|" + "---:|" * len(names)
    rows = [f"| {a} | " + " | ".join(f"{r[a][b]:.2f}" for b in names) + " |" for a in names]
    return "\n".join([head, sep, *rows])


def breakdown_table(runs: Sequence[PathRun]) -> str:
    stages = ["queue", "tokenize", "generate", "score_inputs", "score", "request_total"]
    shown = [r for r in runs if r.breakdown_s]
    head = "| path | wall s | " + " | ".join(f"{s} s" for s in stages) + " |"
    sep = "|---|---:|" + "---:|" * len(stages)
    rows = [
        f"| {r.path} | {r.wall_s:.1f} | "
        + " | ".join(_fmt(r.breakdown_s.get(s, math.nan), 1) for s in stages)
        + " |"
        for r in shown
    ]
    return "\n".join([head, sep, *rows])
