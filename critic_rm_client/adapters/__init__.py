"""Critic-RM as a reward function for TRL, verl and OpenRLHF, over one factory.

``make_reward_function(framework, url, **options)`` builds every adapter (the per-framework
``make_*`` functions are that call with the framework filled in). The options are checked when
the adapter is built: a misspelt one (``num_critque=2``) raises ``TypeError`` naming it instead of
falling back to the checkpoint's default m. They are

- the scoring options ``num_critiques`` (m), ``temperature``, ``top_p``,
  ``max_critique_tokens``, ``truncate_prompt`` (default True: an over-long prompt is cut from
  the left rather than failing the training step with a 422), ``use_cache``;
- ``empty_reward`` and ``empty_reward_stds`` (below);
- the client's ``ClientConfig`` fields: ``api_key``, ``deadline_s``, ``max_batch_items``,
  ``max_concurrency``, ``max_retries``, ``backoff_base_s``, ``max_backoff_s``,
  ``connect_timeout_s``, ``read_timeout_s``, ``retry_statuses``, ``headers``;
- per framework: ``name`` (TRL: the ``rewards/<name>/mean`` metric), ``prompt_keys`` (verl);
  ``verl_pairwise`` takes ``compare``'s options and ``ties`` instead of the scoring and
  empty-response ones (``critic_rm_client.adapters.verl_pairwise``).

**Empty responses** cannot be scored (the service refuses them with a 422, which would fail the
whole batch), so they get a reward without a request: ``empty_reward`` when given, else
``mean - empty_reward_stds * std`` (default 3 standard deviations below the mean) of the served
checkpoint's reward statistics, which ``GET /info`` publishes from its manifest as
``reward_stats`` (read once per model version). A checkpoint without statistics (an untrained
bootstrap) has no scale to place it on: the call then raises and asks for ``empty_reward``. An
adapter never returns None, so TRL never logs NaN rewards.

**All calls block** unless they are the async ones (``arewards``, ``VerlComputeScore.acall``,
``compute_score_async``). Adapters are thread-safe and picklable: the HTTP client is built lazily
in each process (and, for the async path, once per event loop), so they can be shipped to Ray or
multiprocessing workers.

The modules, each importing only those before it: ``base`` (options, settings, the shared
``RewardFunction``, the empty-response reward), ``trl``, ``trl_judge`` (TRL's pairwise judge over
``/compare``), ``verl`` (with the module-level entry
points verl loads from this package), ``verl_pairwise`` (a GRPO group's win rates over
``/compare``, and its entry point ``compare_score_batch``), ``openrlhf``, and ``factory``
(``make_reward_function``).
"""

from critic_rm_client.adapters.base import (
    EMPTY_REWARD_STDS,
    RewardFunction,
    RewardSettings,
    empty_reward_from_info,
)
from critic_rm_client.adapters.factory import make_reward_function
from critic_rm_client.adapters.openrlhf import OpenRLHFRewardFunc, make_openrlhf_reward_func
from critic_rm_client.adapters.trl import TRLRewardFunc, make_trl_reward_func
from critic_rm_client.adapters.trl_judge import TRLPairwiseJudge, make_trl_pairwise_judge
from critic_rm_client.adapters.verl import (
    VerlBatchComputeScore,
    VerlComputeScore,
    compute_score,
    compute_score_async,
    compute_score_batch,
    make_verl_batch_compute_score,
    make_verl_compute_score,
)
from critic_rm_client.adapters.verl_pairwise import (
    VerlPairwiseComputeScore,
    compare_score_batch,
    make_verl_pairwise_compute_score,
)

__all__ = [
    "EMPTY_REWARD_STDS",
    "OpenRLHFRewardFunc",
    "RewardFunction",
    "RewardSettings",
    "TRLPairwiseJudge",
    "TRLRewardFunc",
    "VerlBatchComputeScore",
    "VerlComputeScore",
    "VerlPairwiseComputeScore",
    "compare_score_batch",
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "empty_reward_from_info",
    "make_openrlhf_reward_func",
    "make_reward_function",
    "make_trl_pairwise_judge",
    "make_trl_reward_func",
    "make_verl_batch_compute_score",
    "make_verl_compute_score",
    "make_verl_pairwise_compute_score",
]
