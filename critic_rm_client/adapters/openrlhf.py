"""OpenRLHF's ``reward_func(queries, prompts, labels)`` over ``/get_reward``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from critic_rm_client import calls
from critic_rm_client.adapters.base import RewardFunction, build_adapter, scatter
from critic_rm_client.steps import Call

# The chat-template markers a decoded rollout ends with (<|im_end|>, <|eot_id|>, </s>, ...):
# a response that is nothing else is empty.
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>|</s>|<eos>|<end_of_turn>|<｜[^｜<>]{1,40}｜>")


def _response_part(query: str, prompt: str | None) -> str | None:
    if prompt is None or not query.startswith(prompt):
        return None
    return _SPECIAL.sub("", query[len(prompt) :])


class OpenRLHFRewardFunc(RewardFunction):
    """OpenRLHF's ``reward_func(queries, prompts, labels)`` (a Python file given as the remote
    reward URL): ``queries`` are the decoded prompt+response texts with their special tokens,
    which the service splits back into messages with the checkpoint's own chat template
    (``POST /get_reward``). Unlike pointing OpenRLHF at ``/get_reward`` directly, this sends the
    API key, retries and chunks, and gives empty responses the empty reward. ``/get_reward``
    samples at the checkpoint's defaults, so the scoring options are refused here. Blocks."""

    TAKES_SCORE_OPTIONS = False

    def __call__(
        self, queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None
    ) -> dict[str, Any]:
        # labels (--label_key) are reference answers; Critic-RM judges the response itself.
        if len(prompts) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")
        return self.client.run(self._get_rewards(queries, prompts))

    def _get_rewards(self, queries: Sequence[str], prompts: Sequence[str]) -> Call[dict[str, Any]]:
        empty = [_response_part(q, p) for q, p in zip(queries, prompts, strict=True)]
        todo = [i for i, rest in enumerate(empty) if rest is None or rest.strip()]
        n = len(queries)
        scored: list[float] = []
        logs: dict[str, list[float]] = {}
        if todo:
            result = yield from calls.get_reward(
                self.settings.client, [queries[i] for i in todo], [prompts[i] for i in todo]
            )
            scored = result.rewards
            logs = {k: scatter(n, todo, v, 0.0) for k, v in result.extra_logs.items()}
        # /get_reward names no version
        fill = (yield from self._empty_reward(None)) if len(todo) < n else 0.0
        rewards = scatter(n, todo, scored, fill)
        return {"rewards": rewards, "scores": list(rewards), "extra_logs": logs}


def make_openrlhf_reward_func(url: str, **options: Any) -> OpenRLHFRewardFunc:
    """``make_reward_function("openrlhf", url, **options)``: the empty-reward and client
    options only (``/get_reward`` samples at the checkpoint's defaults)."""
    return build_adapter(OpenRLHFRewardFunc, "openrlhf", url, options)
