"""The typed results of the Critic-RM client, and what it accepts as items to score."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "CompareResult",
    "Critique",
    "CritiqueParts",
    "CritiqueResult",
    "ItemScore",
    "Message",
    "PairJudgment",
    "Prompt",
    "ReadyStatus",
    "RefineResult",
    "RefineRound",
    "Refined",
    "RewardsResult",
    "ScoreItem",
    "ScoreItemLike",
    "ScoreResult",
    "Usage",
]

Message: TypeAlias = Mapping[str, Any]
"""A chat message: ``{"role": ..., "content": ...}``; other keys are dropped when sent."""
Prompt: TypeAlias = str | Sequence[Message]


@dataclass(frozen=True)
class ScoreItem:
    """A (prompt, response) pair to score. ``prompt`` is text or a list of chat messages."""

    prompt: Prompt
    response: str


ScoreItemLike: TypeAlias = ScoreItem | Mapping[str, Any] | tuple[Prompt, str]
"""What ``score`` accepts per item: a ``ScoreItem``, a ``{"prompt", "response"}`` mapping, or a
``(prompt, response)`` pair."""


@dataclass(frozen=True)
class Usage:
    """Tokens the service processed for a call (summed over split requests)."""

    prompt_tokens: int = 0
    critique_tokens: int = 0


@dataclass(frozen=True)
class ItemScore:
    """The service's result for one item: the mean reward over the m critiques, the m rewards,
    their standard deviation, the critique texts when asked for, and whether it came from the
    service's result cache."""

    reward: float
    critique_rewards: list[float]
    reward_std: float
    critiques: list[str] | None
    cached: bool


@dataclass(frozen=True)
class ScoreResult:
    """The result of one ``score`` call, in input order, all from one ``model_version``."""

    model_version: str
    results: list[ItemScore]
    usage: Usage
    warnings: list[str]

    @property
    def rewards(self) -> list[float]:
        """The per-item rewards, in input order."""
        return [r.reward for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[ItemScore]:
        return iter(self.results)


@dataclass(frozen=True)
class Critique:
    """One sampled critique and the reward read after it."""

    text: str
    reward: float
    finish_reason: str
    # With ``format="structured"`` only: the critique's parts and its verdict.
    analysis: str | None = None
    suggestions: str | None = None
    verdict: str | None = None


@dataclass(frozen=True)
class CritiqueResult:
    """The result of ``critique``: the sampled critiques and their mean reward."""

    model_version: str
    critiques: list[Critique]
    reward: float
    cached: bool
    usage: Usage
    warnings: list[str]


@dataclass(frozen=True)
class CritiqueParts:
    """A structured critique: its text, analysis, suggestions and verdict."""

    text: str
    analysis: str
    suggestions: str
    verdict: str | None


@dataclass(frozen=True)
class Refined:
    """A response of a ``refine`` trajectory with its reward, the m rewards and critiques."""

    response: str
    reward: float
    critique_rewards: list[float]
    critiques: list[CritiqueParts]
    cached: bool


@dataclass(frozen=True)
class RefineRound:
    """One critique-revision round: the critique the revisions were written from, the scored
    revisions, and whether one beat the best response so far."""

    round: int
    critique: CritiqueParts
    candidates: list[Refined]
    improved: bool


@dataclass(frozen=True)
class RefineResult:
    """The result of ``refine``: the best response (``best_round`` 0: the original), the whole
    trajectory, why it stopped, all from one ``model_version``."""

    model_version: str
    best_response: str
    best_reward: float
    best_round: int
    original: Refined
    rounds: list[RefineRound]
    stop_reason: str
    usage: Usage
    revision_tokens: int
    warnings: list[str]


@dataclass(frozen=True)
class PairJudgment:
    """The judgment of responses ``a`` and ``b`` (indices into the responses sent): the
    preference (``"A"`` for ``a``, ``"B"``, ``"tie"``), p(``a`` better), the reward head's
    Bradley-Terry probability beside it, the votes of the trajectories (both orders), and each
    trajectory's ranked criteria with their rubrics and scores as the service returned them."""

    a: int
    b: int
    preference: str
    p_a: float
    bt_p_a: float
    votes: dict[str, int]
    consistency: float
    position_disagreement: bool
    identical: bool
    trajectories: list[dict[str, Any]]


@dataclass(frozen=True)
class CompareResult:
    """The result of ``compare``: every pair, the ranking (more than two responses), the m = 0
    rewards, all from one ``model_version``."""

    model_version: str
    pairs: list[PairJudgment]
    ranking: list[int] | None
    rewards: list[float]
    judge_tokens: int
    warnings: list[str]


@dataclass(frozen=True)
class ReadyStatus:
    """``GET /ready``: ``ready`` is true once the engines are loaded and warmed up; otherwise
    ``status`` is the service state (``loading``, ``warming``, ``failed``) and ``error`` why."""

    ready: bool
    status: str
    model_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class RewardsResult:
    """``POST /get_reward`` (OpenRLHF's protocol): one reward per rendered query, the same values
    as ``scores``, and per-item logs (``critic_rm_reward_std``, ``critic_rm_critique_tokens``)."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]
