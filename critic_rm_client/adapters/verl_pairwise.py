"""verl's pairwise reward over ``/compare``, for GRPO-style groups: the responses of a batch are
grouped by their prompt (GRPO's n rollouts of one prompt), each group is judged through criteria,
rubrics and scores in both orders, and each response's reward is its win rate against the others
of its group, in [0, 1]: the mean over its opponents of p(it is better).

verl's per-response reward loop sees one response at a time, so a pairwise reward needs the
batch: ``reward_model.use_reward_loop=False reward_model.reward_manager=batch
custom_reward_function.path=pkg://critic_rm_client.adapters
custom_reward_function.name=compare_score_batch``.

- A group of 2-4 distinct responses is one ``/compare`` call; a larger one is judged pair by pair
  (n(n-1)/2 calls of two responses, sent ``max_concurrency`` at a time): each pair is judged
  in both orders either way, so a call of four costs what its six pairs cost alone.
- Repeated responses (GRPO samples repeat short answers) are judged once; copies tie with each
  other (0.5), as the service ties identical responses.
- An empty response loses to every non-empty one and ties with another empty one, without a
  request (the service refuses empty responses).
- ``ties="reward_head"`` (the default) breaks a tied verdict with the reward head's
  Bradley-Terry probability ``sigmoid(r_A - r_B)``, which ``/compare`` returns beside it, so a
  judge that ties everything still ranks the group; ``ties="half"`` keeps 0.5.
- All groups of a batch are judged by one model version (a reload mid-batch: the batch is
  judged again once, then ``CriticRMVersionMismatch``)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

from critic_rm_client import calls
from critic_rm_client.adapters.base import RewardSettings, build_adapter
from critic_rm_client.adapters.verl import _shared_adapter, _VerlShape
from critic_rm_client.config import COMPARE_OPTION_NAMES, ClientConfig
from critic_rm_client.errors import CriticRMVersionMismatch
from critic_rm_client.results import CompareResult, Prompt
from critic_rm_client.steps import Call, Gather

TIES = ("reward_head", "half")
MAX_PER_CALL = 4  # /compare's limit on responses


def groups(prompts: Sequence[Prompt]) -> list[list[int]]:
    """Batch indices grouped by prompt (text, or messages compared as JSON), in first-seen order."""
    by_key: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_key.setdefault(json.dumps(prompt, sort_keys=True), []).append(i)
    return list(by_key.values())


def plan(k: int) -> list[tuple[int, ...]]:
    """The ``/compare`` calls that judge every pair of ``k`` distinct responses: one call of all
    of them when they fit, else one call per pair."""
    if k < 2:
        return []
    if k <= MAX_PER_CALL:
        return [tuple(range(k))]
    return list(itertools.combinations(range(k), 2))


def pair_matrix(
    k: int, judged: Sequence[tuple[tuple[int, ...], CompareResult]], ties: str
) -> list[list[float]]:
    """``p[i][j]`` = p(distinct response i beats j), from the calls' pair judgments."""
    p = [[0.5] * k for _ in range(k)]
    for members, result in judged:
        for pair in result.pairs:
            p_a = pair.p_a
            if pair.preference == "tie" and ties == "reward_head":
                p_a = pair.bt_p_a
            i, j = members[pair.a], members[pair.b]
            p[i][j], p[j][i] = p_a, 1.0 - p_a
    return p


def win_rates(responses: Sequence[str], p: Sequence[Sequence[float]]) -> list[float]:
    """Each response's mean p(better) over the others of its group; ``p`` is over the distinct
    non-empty responses in first-seen order. A group of one has no opponent: 0.5."""
    distinct = {r: d for d, r in enumerate(dict.fromkeys(r for r in responses if r.strip()))}

    def beats(x: str, y: str) -> float:
        if not x.strip() or not y.strip():
            return 0.5 if not x.strip() and not y.strip() else float(bool(x.strip()))
        return p[distinct[x]][distinct[y]]

    out = []
    for i, mine in enumerate(responses):
        others = [beats(mine, theirs) for j, theirs in enumerate(responses) if j != i]
        out.append(sum(others) / len(others) if others else 0.5)
    return out


def pairwise_rewards(
    config: ClientConfig,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    options: Mapping[str, Any],
    ties: str,
) -> Call[list[float]]:
    """Each response's win rate in its prompt's group, every group judged by one model version."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    batch = groups(prompts)
    distinct = [list(dict.fromkeys(responses[i] for i in g if responses[i].strip())) for g in batch]
    todo = [(g, members) for g, d in enumerate(distinct) for members in plan(len(d))]
    results: list[CompareResult] = []
    for _ in range(2):
        results = yield Gather(
            [
                calls.compare(
                    config, prompts[batch[g][0]], [distinct[g][m] for m in members], options
                )
                for g, members in todo
            ],
            config.max_concurrency,
        )
        if len({r.model_version for r in results}) <= 1:
            break
    else:
        raise CriticRMVersionMismatch([r.model_version for r in results])
    judged_by_group: list[list[tuple[tuple[int, ...], CompareResult]]] = [[] for _ in batch]
    for (g, call), result in zip(todo, results, strict=True):
        judged_by_group[g].append((call, result))
    out = [0.0] * len(responses)
    for g, members in enumerate(batch):
        judged = judged_by_group[g]
        rates = win_rates(
            [responses[i] for i in members], pair_matrix(len(distinct[g]), judged, ties)
        )
        for i, rate in zip(members, rates, strict=True):
            out[i] = rate
    return out


class VerlPairwiseComputeScore(_VerlShape):
    """verl's batched ``custom_reward_function`` over ``/compare``: ``(data_sources,
    solution_strs, ground_truths, extra_infos) -> list[float]``, each response's win rate in its
    prompt's group. Options: ``compare``'s (``criteria``, ``num_criteria``, ``samples``, ...),
    ``ties``, ``prompt_keys`` and the client's."""

    EXTRA_OPTIONS = _VerlShape.EXTRA_OPTIONS | {"ties"} | COMPARE_OPTION_NAMES
    TAKES_SCORE_OPTIONS: ClassVar[bool] = False
    TAKES_EMPTY_OPTIONS: ClassVar[bool] = False

    def __init__(
        self,
        settings: RewardSettings,
        *,
        prompt_keys: Sequence[str] = ("prompt", "question"),
        ties: str = "reward_head",
        **compare_options: Any,
    ) -> None:
        super().__init__(settings, prompt_keys=prompt_keys)
        if ties not in TIES:
            raise ValueError(f"ties must be one of {list(TIES)}, not {ties!r}")
        self.ties = ties
        self.compare_options = compare_options

    def _call(
        self, solution_strs: Sequence[str], extra_infos: Sequence[Any] | None
    ) -> Call[list[float]]:
        prompts = self._prompts(solution_strs, extra_infos)
        return pairwise_rewards(
            self.settings.client, prompts, solution_strs, self.compare_options, self.ties
        )

    def __call__(
        self,
        data_sources: Sequence[Any],
        solution_strs: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        return self.client.run(self._call(solution_strs, extra_infos))

    async def acall(
        self,
        data_sources: Sequence[Any],
        solution_strs: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        """``__call__`` without blocking the event loop."""
        return await self._async_client().run(self._call(solution_strs, extra_infos))


def make_verl_pairwise_compute_score(url: str, **options: Any) -> VerlPairwiseComputeScore:
    """``make_reward_function("verl_pairwise", url, **options)``."""
    return build_adapter(VerlPairwiseComputeScore, "verl_pairwise", url, options)


def compare_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **reward_kwargs: Any,
) -> list[float]:
    """verl's batched entry point for the pairwise reward (``reward_model.use_reward_loop=False
    reward_model.reward_manager=batch``); ``reward_kwargs`` are the adapter's options plus
    ``url`` (default ``$CRITIC_RM_URL``; the API key defaults to ``$CRITIC_RM_API_KEY``)."""
    adapter = cast(
        VerlPairwiseComputeScore,
        _shared_adapter(VerlPairwiseComputeScore, "verl_pairwise", reward_kwargs),
    )
    return adapter(data_sources, solution_strs, ground_truths, extra_infos)
