"""TRL's pairwise judge over ``/compare`` (the interface ``OnlineDPOTrainer`` and
``XPOTrainer`` take as ``judge=``): ``judge(prompts, completions, shuffle_order=True)`` returns,
per prompt, the index (0 or 1) of the better of its two completions, and -1 where judging failed.

The service always judges both orders and answers a tie when they disagree, so
``shuffle_order`` changes nothing (TRL's own judges flip the order once, at random). A tie is
broken by the reward head's Bradley-Terry probability, which ``/compare`` returns beside each
verdict. With ``return_scores=True`` the judge returns p(first better) instead."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

from critic_rm_client.config import COMPARE_OPTION_NAMES, check_names
from critic_rm_client.errors import CriticRMError
from critic_rm_client.results import PairJudgment
from critic_rm_client.sync import RewardClient

FAILED = -1


def choice(pair: PairJudgment) -> int:
    """0 if the first completion is better, 1 if the second; a tie goes to the reward head."""
    if pair.preference == "A":
        return 0
    if pair.preference == "B":
        return 1
    return 0 if pair.bt_p_a >= 0.5 else 1


class TRLPairwiseJudge:
    """A TRL pairwise judge (duck-typed ``BasePairwiseJudge``) backed by critic-rm's
    ``/compare``. ``options`` are ``compare``'s (``criteria``, ``num_criteria``, ``samples``,
    ...) and the client's (``api_key``, ``deadline_s``, ``max_concurrency``, ...)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.compare_options = {k: v for k, v in options.items() if k in COMPARE_OPTION_NAMES}
        client_options = {k: v for k, v in options.items() if k not in COMPARE_OPTION_NAMES}
        self._client = RewardClient(url, **client_options)
        self._workers = self._client.config.max_concurrency

    def judge(
        self,
        prompts: Sequence[str],
        completions: Sequence[Sequence[str]],
        shuffle_order: bool = True,
        return_scores: bool = False,
    ) -> list[int] | list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion pairs")
        for i, pair in enumerate(completions):
            if len(pair) != 2:
                raise ValueError(f"completions[{i}] has {len(pair)} completions, not 2")

        def one(i: int) -> PairJudgment | None:
            first, second = completions[i]
            if not first.strip() or not second.strip():
                return None  # the service refuses empty responses: a failed judgment
            try:
                result = self._client.compare(prompts[i], [first, second], **self.compare_options)
            except CriticRMError:
                return None
            return result.pairs[0]

        with concurrent.futures.ThreadPoolExecutor(max_workers=self._workers) as pool:
            judged = list(pool.map(one, range(len(prompts))))
        if return_scores:
            return [float(FAILED) if p is None else p.p_a for p in judged]
        return [FAILED if p is None else choice(p) for p in judged]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TRLPairwiseJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_trl_pairwise_judge(url: str, **options: Any) -> TRLPairwiseJudge:
    """A ``TRLPairwiseJudge``; a misspelt option raises TypeError naming it."""
    from critic_rm_client.config import client_option_names

    check_names(options, COMPARE_OPTION_NAMES | client_option_names(), "option")
    return TRLPairwiseJudge(url, **options)
