"""The voting rules of /compare (SyncPL): within one judgment trajectory, the ranking rule puts
the criterion with the largest score gap first and lets it decide; over the sampled
trajectories, the consistency rule takes the majority. Every pair is judged in both orders; when
the two orders' majorities disagree, the pair is a tie (p = 0.5) and counted as a position
disagreement. Pure functions, so the rules are tested on their own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Preference = Literal["A", "B", "tie"]


@dataclass(frozen=True)
class CriterionScores:
    criterion: str
    rubric: str
    score_a: int  # the digit decoded for the pair's response A, wherever it was shown
    score_b: int
    # The expected scores under the judge's digit probabilities (greedy /compare reads them);
    # None where only the digits are known (sampled scores, an engine without the values).
    expected_a: float | None = None
    expected_b: float | None = None

    @property
    def gap(self) -> float:
        """What the rules judge by: the expected scores' gap where both are known."""
        if self.expected_a is not None and self.expected_b is not None:
            return self.expected_a - self.expected_b
        return float(self.score_a - self.score_b)

    def digits_only(self) -> CriterionScores:
        """These scores judged by their decoded digits alone."""
        return CriterionScores(self.criterion, self.rubric, self.score_a, self.score_b)


@dataclass(frozen=True)
class Trajectory:
    """One judgment: criteria -> rubrics -> scores, in one presentation order."""

    order: Literal["AB", "BA"]  # AB: the pair's A was shown first
    criteria: list[CriterionScores]
    sample: int = 0  # which sampled criteria list (and rubrics) it judged by

    def ranked(self) -> list[CriterionScores]:
        """The ranking rule: the largest score gap first (stable among equal gaps)."""
        return sorted(self.criteria, key=lambda c: -abs(c.gap))

    def preference(self) -> Preference:
        """Decided by the top-ranked criteria (all those sharing the largest gap)."""
        ranked = self.ranked()
        if not ranked or ranked[0].gap == 0:
            return "tie"
        top = abs(ranked[0].gap)
        total = sum(c.gap for c in ranked if abs(c.gap) == top)
        return "A" if total > 0 else "B" if total < 0 else "tie"


@dataclass(frozen=True)
class PairVerdict:
    preference: Preference
    p_a: float  # p(A better): votes for A plus half the ties, over all votes
    votes: dict[str, int]
    consistency: float  # the share of trajectories that agree with the preference
    position_disagreement: bool
    by_order: dict[str, Preference]


def majority(prefs: Sequence[Preference]) -> Preference:
    """The consistency rule: the most common judgment; a tie between A and B is a tie."""
    counts = Counter(prefs)
    if counts["A"] > counts["B"] and counts["A"] >= counts["tie"]:
        return "A"
    if counts["B"] > counts["A"] and counts["B"] >= counts["tie"]:
        return "B"
    return "tie"


def judge_pair(trajectories: Sequence[Trajectory]) -> PairVerdict:
    """The verdict of one pair from its trajectories in both orders."""
    prefs = [t.preference() for t in trajectories]
    votes = {k: prefs.count(k) for k in ("A", "B", "tie")}
    by_order: dict[str, Preference] = {}
    for order in ("AB", "BA"):
        mine = [p for t, p in zip(trajectories, prefs, strict=True) if t.order == order]
        if mine:
            by_order[order] = majority(mine)
    decided = set(by_order.values())
    disagree = len(decided) > 1
    preference: Preference = "tie" if disagree or not decided else decided.pop()
    n = max(len(prefs), 1)
    p_a = 0.5 if disagree else (votes["A"] + 0.5 * votes["tie"]) / n
    consistency = prefs.count(preference) / n
    return PairVerdict(preference, p_a, votes, consistency, disagree, by_order)


def identical_pair() -> PairVerdict:
    """Two identical responses: a tie, judged without generation."""
    return PairVerdict("tie", 0.5, {"A": 0, "B": 0, "tie": 0}, 1.0, False, {})


def ranking(n: int, verdicts: dict[tuple[int, int], PairVerdict]) -> list[int]:
    """Responses best first by their summed p(better) over their pairs (Borda over p)."""
    score = [0.0] * n
    for (i, j), v in verdicts.items():
        score[i] += v.p_a
        score[j] += 1.0 - v.p_a
    return sorted(range(n), key=lambda k: (-score[k], k))
