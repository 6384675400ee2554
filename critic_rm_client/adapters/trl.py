"""TRL's ``GRPOTrainer`` reward function over the shared adapter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from critic_rm_client.adapters.base import RewardFunction, RewardSettings, build_adapter
from critic_rm_client.build import message_text
from critic_rm_client.results import Prompt


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    # Conversational: usually one assistant message; with tool use, the assistant turns
    # interleave with tool results, and only what the policy wrote is scored.
    texts = [
        message_text(m.get("content"))
        for m in completion
        if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"
    ]
    return "\n\n".join(t for t in texts if t)


def _trl_prompt(prompt: Any) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    return [m for m in prompt if isinstance(m, Mapping)]


class TRLRewardFunc(RewardFunction):
    """A TRL ``GRPOTrainer`` reward function: ``(prompts, completions, **columns) -> rewards``.

    Prompts and completions are strings (standard datasets) or lists of ``{"role", "content"}``
    messages (conversational ones; the assistant turns of a completion are scored). The
    ``__name__`` names TRL's ``rewards/<name>/mean`` metrics. Blocks until the service answers.
    """

    EXTRA_OPTIONS = frozenset({"name"})
    __name__: str

    def __init__(self, settings: RewardSettings, *, name: str = "critic_rm") -> None:
        super().__init__(settings)
        self.__name__ = name

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Any = None,
        trainer_state: Any = None,
        **columns: Any,
    ) -> list[float]:
        # TRL passes every other dataset column (and, in newer releases, logging hooks) as
        # keywords whose names the dataset decides; the reward needs none of them.
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = [
            (_trl_prompt(p), _completion_text(c)) for p, c in zip(prompts, completions, strict=True)
        ]
        return self.rewards(pairs)

    def __repr__(self) -> str:
        return f"TRLRewardFunc({self.__name__!r}, url={self.url!r})"


def make_trl_reward_func(url: str, **options: Any) -> TRLRewardFunc:
    """``make_reward_function("trl", url, **options)``."""
    return build_adapter(TRLRewardFunc, "trl", url, options)
