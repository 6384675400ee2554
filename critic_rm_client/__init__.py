"""The Critic-RM rollout-worker client: stdlib + httpx only (``pip install critic-rm``).

::

    from critic_rm_client import RewardClient

    with RewardClient("http://critic-rm:8000", api_key="...") as rm:
        result = rm.score([("What is 17 * 3?", "51")], num_critiques=4)
        print(result.model_version, result.rewards)

``RewardClient`` (threads) and ``AsyncRewardClient`` (asyncio) are thin loops over one I/O-free
core: ``config`` (``ClientConfig``, option names), ``build`` (request JSON, chunking), ``steps``
(the actions a call yields), ``parse`` (answers into results), ``retry`` (the retry policy and
deadlines) and ``calls`` (the API calls); the TRL, verl and OpenRLHF reward functions are in
``critic_rm_client.adapters``. ``CriticRMClient`` and
``AsyncCriticRMClient`` are the names the clients had before they got their own package.
"""

from critic_rm_client.aio import AsyncRewardClient
from critic_rm_client.build import message_text
from critic_rm_client.config import (
    ClientConfig,
    CompareOptions,
    PolicyOption,
    RefineOptions,
    SamplingOptions,
    ScoreOptions,
)
from critic_rm_client.errors import (
    CriticRMDeadlineExceeded,
    CriticRMError,
    CriticRMHTTPError,
    CriticRMUnavailable,
    CriticRMVersionMismatch,
)
from critic_rm_client.results import (
    CompareResult,
    Critique,
    CritiqueParts,
    CritiqueResult,
    ItemScore,
    Message,
    PairJudgment,
    Prompt,
    ReadyStatus,
    Refined,
    RefineResult,
    RefineRound,
    RewardsResult,
    ScoreItem,
    ScoreItemLike,
    ScoreResult,
    Usage,
)
from critic_rm_client.sync import RewardClient

CriticRMClient = RewardClient
AsyncCriticRMClient = AsyncRewardClient

__all__ = [
    "AsyncCriticRMClient",
    "AsyncRewardClient",
    "ClientConfig",
    "CompareOptions",
    "CompareResult",
    "CriticRMClient",
    "CriticRMDeadlineExceeded",
    "CriticRMError",
    "CriticRMHTTPError",
    "CriticRMUnavailable",
    "CriticRMVersionMismatch",
    "Critique",
    "CritiqueParts",
    "CritiqueResult",
    "ItemScore",
    "Message",
    "PairJudgment",
    "PolicyOption",
    "Prompt",
    "ReadyStatus",
    "RefineOptions",
    "RefineResult",
    "RefineRound",
    "Refined",
    "RewardClient",
    "RewardsResult",
    "SamplingOptions",
    "ScoreItem",
    "ScoreItemLike",
    "ScoreOptions",
    "ScoreResult",
    "Usage",
    "message_text",
]
