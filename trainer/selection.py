"""Instance filtering and critique selection (Critic-RM §3.2).

A pair is kept when the mean judge score of the chosen response's critiques is above that of
the rejected one's: the critiques then agree with the preference label. Ranking-based
refinement keeps, per response, the K critiques the meta-judge scored highest."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Scored:
    """A critique with the judge score it gave (parsed; None when unparseable)."""

    text: str
    score: int | None


def mean_score(critiques: Sequence[Scored]) -> float | None:
    scores = [c.score for c in critiques if c.score is not None]
    return statistics.fmean(scores) if scores else None


def keep_pair(chosen: Sequence[Scored], rejected: Sequence[Scored]) -> bool:
    """Keep only when both sides have a parsed score and chosen's mean is strictly higher."""
    c, r = mean_score(chosen), mean_score(rejected)
    return c is not None and r is not None and c > r


@dataclass(frozen=True)
class FilterReport:
    kept: dict[str, int]
    total: dict[str, int]
    # Grounded pairs dropped because the verifier disagreed with the label.
    label_disagreements: dict[str, int] = field(default_factory=dict)

    def fraction(self, category: str) -> float:
        return (
            self.kept.get(category, 0) / self.total[category] if self.total.get(category) else 0.0
        )

    @property
    def overall(self) -> float:
        total = sum(self.total.values())
        return sum(self.kept.values()) / total if total else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "overall": self.overall,
            "label_disagreements": self.label_disagreements,
            "per_category": {
                c: {"kept": self.kept.get(c, 0), "total": n, "fraction": self.fraction(c)}
                for c, n in sorted(self.total.items())
            },
        }


def filter_pairs(
    pairs: Sequence[T],
    categories: Sequence[str],
    chosen: Sequence[Sequence[Scored]],
    rejected: Sequence[Sequence[Scored]],
) -> tuple[list[T], FilterReport]:
    kept: list[T] = []
    n_kept: dict[str, int] = defaultdict(int)
    n_total: dict[str, int] = defaultdict(int)
    for pair, cat, c, r in zip(pairs, categories, chosen, rejected, strict=True):
        n_total[cat] += 1
        if keep_pair(c, r):
            kept.append(pair)
            n_kept[cat] += 1
    return kept, FilterReport(dict(n_kept), dict(n_total))


def filter_grounded(
    records: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], FilterReport, dict[str, float]]:
    """The grounded filter: a critique is kept only when its verdict agrees with the verifier's
    on the same response. A grounded pair stays for the reward head even when a side keeps no
    critique (its plain and service-sampled reward inputs do not depend on critique quality);
    `kept` counts the pairs with a grounded critique on both sides, the paper's instance
    filter, which the `train` reward input applies. Records without a verifier are judged by
    `keep_pair` on their judge scores and dropped when it fails. Also returns, per category,
    the fraction of critiques whose verdict agreed with the verifier."""
    kept: list[dict[str, Any]] = []
    n_kept: dict[str, int] = defaultdict(int)
    n_total: dict[str, int] = defaultdict(int)
    agree: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    disagree: dict[str, int] = defaultdict(int)
    for rec in records:
        cat = str(rec["pair"].get("category", "general"))
        n_total[cat] += 1
        verifier = rec.get("verifier")
        if verifier is None:
            if keep_pair(_scored(rec["chosen"]), _scored(rec["rejected"])):
                kept.append(rec)
                n_kept[cat] += 1
            continue
        if not verifier["chosen"]["correct"] or verifier["rejected"]["correct"]:
            # The verifier disagrees with the label (e.g. a sandbox run that timed out under
            # load): neither side's critiques can be grounded, so the pair is not trained on.
            disagree[cat] += 1
            continue
        out = dict(rec)
        for side in ("chosen", "rejected"):
            want = "Correct" if verifier[side]["correct"] else "Incorrect"
            out[side] = [c for c in rec[side] if c.get("verdict") == want]
            agree[cat][0] += len(out[side])
            agree[cat][1] += len(rec[side])
        kept.append(out)
        if out["chosen"] and out["rejected"]:
            n_kept[cat] += 1
    rates = {c: a / n for c, (a, n) in sorted(agree.items()) if n}
    return kept, FilterReport(dict(n_kept), dict(n_total), dict(disagree)), rates


def _scored(critiques: Sequence[dict[str, Any]]) -> list[Scored]:
    return [Scored(c["text"], c.get("score")) for c in critiques]


def top_k(critiques: Sequence[Scored], meta_scores: Sequence[int | None], k: int) -> list[Scored]:
    """The k critiques with the highest meta-judge scores (unscored last; ties keep order)."""
    order = sorted(
        range(len(critiques)),
        key=lambda i: (meta_scores[i] is None, -(meta_scores[i] or 0), i),
    )
    return [critiques[i] for i in order[:k]]
