"""The one factory: a framework's name to its adapter, options checked when it is built."""

from __future__ import annotations

from typing import Any

from critic_rm_client.adapters.base import RewardFunction, build_adapter
from critic_rm_client.adapters.openrlhf import OpenRLHFRewardFunc
from critic_rm_client.adapters.trl import TRLRewardFunc
from critic_rm_client.adapters.verl import VerlBatchComputeScore, VerlComputeScore
from critic_rm_client.adapters.verl_pairwise import VerlPairwiseComputeScore

FRAMEWORKS: dict[str, type[RewardFunction]] = {
    "trl": TRLRewardFunc,
    "verl": VerlComputeScore,
    "verl_batch": VerlBatchComputeScore,
    "verl_pairwise": VerlPairwiseComputeScore,
    "openrlhf": OpenRLHFRewardFunc,
}


def make_reward_function(framework: str, url: str, **options: Any) -> RewardFunction:
    """The reward function for ``framework`` (``trl``, ``verl``, ``verl_batch``, ``verl_pairwise``,
    ``openrlhf``)
    scoring with the service at ``url``; the options are in ``critic_rm_client.adapters``'
    docstring."""
    kind = FRAMEWORKS.get(framework)
    if kind is None:
        raise ValueError(f"unknown framework {framework!r}: one of {', '.join(FRAMEWORKS)}")
    return build_adapter(kind, framework, url, options)
