"""The reward-quality targets, checked on an evaluation report: per split, Critic-RM at m = 4
no worse than the standard RM minus one point, accuracy non-decreasing from m = 1 to m = 8,
and Critic-RM ahead of the standard RM on the length-bias split (where critiques are meant to
resist the longer, more elaborate wrong answer); the paper's goal is 3 points ahead."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

TOLERANCE = 0.01  # "no worse than the standard RM minus 1 point"
GOAL = 0.03  # the paper's margin


def _acc(by_m: dict[str, Any], m: int) -> float | None:
    a = by_m.get(str(m))
    return None if a is None else a["overall"]


def check(own: dict[str, Any], baseline: dict[str, Any], m: int = 4) -> list[dict[str, Any]]:
    """One row per split both reports have."""
    rows = []
    for split, by_m in own.get("splits", {}).items():
        base_by_m = baseline.get("splits", {}).get(split)
        if not base_by_m:
            continue
        bt, crm = _acc(base_by_m, 0), _acc(by_m, m)
        if bt is None or crm is None:
            continue
        curve = [a for k in (1, 2, 4, 8) if (a := _acc(by_m, k)) is not None]
        rows.append(
            {
                "split": split,
                "pairs": by_m[str(m)]["pairs"],
                "standard_rm": bt,
                "critic_rm_m0": _acc(by_m, 0),
                f"critic_rm_m{m}": crm,
                "margin": crm - bt,
                "no_worse": crm >= bt - TOLERANCE,
                "goal": crm >= bt + GOAL,
                "non_decreasing": all(b >= a for a, b in itertools.pairwise(curve)),
                "ahead": crm > bt if split == "length_bias" else None,
            }
        )
    return rows


def markdown(rows: Sequence[dict[str, Any]], m: int = 4) -> str:
    def yes(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "**no**")

    lines = [
        f"| split | pairs | standard RM | Critic-RM m = 0 | Critic-RM m = {m} | margin | "
        "no worse (−1 pt) | m = 1→8 non-decreasing | ahead (length bias) | goal (+3 pts) |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        m0 = "-" if r["critic_rm_m0"] is None else f"{r['critic_rm_m0']:.3f}"
        lines.append(
            f"| {r['split']} | {r['pairs']} | {r['standard_rm']:.3f} | {m0} | "
            f"{r[f'critic_rm_m{m}']:.3f} | {r['margin']:+.3f} | {yes(r['no_worse'])} | "
            f"{yes(r['non_decreasing'])} | {yes(r['ahead'])} | {yes(r['goal'])} |"
        )
    return "\n".join(lines) + "\n"
