"""verl's reward functions: the per-response ``compute_score`` (sync and async) for the reward
loop, the legacy batched one, and the module-level entry points verl's
``custom_reward_function.path`` loads."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

from critic_rm_client.adapters.base import RewardFunction, RewardSettings, build_adapter
from critic_rm_client.results import Prompt

URL_ENV = "CRITIC_RM_URL"
API_KEY_ENV = "CRITIC_RM_API_KEY"


def _as_prompt(value: Any) -> Prompt | None:
    # verl's non_tensor_batch holds numpy object arrays (parquet lists of messages arrive as
    # arrays of dicts); tolist() turns them back into plain lists.
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, Sequence) and value and all(isinstance(m, Mapping) for m in value):
        return list(value)
    return None


class _VerlShape(RewardFunction):
    """verl never passes the prompt to a reward function, only ``extra_info``: the prompt is
    read from its first key of ``prompt_keys`` that holds text or messages."""

    EXTRA_OPTIONS = frozenset({"prompt_keys"})

    def __init__(
        self, settings: RewardSettings, *, prompt_keys: Sequence[str] = ("prompt", "question")
    ) -> None:
        super().__init__(settings)
        self.prompt_keys = tuple(prompt_keys)

    def _prompt(self, extra_info: Any) -> Prompt:
        if isinstance(extra_info, Mapping):
            for key in self.prompt_keys:
                prompt = _as_prompt(extra_info.get(key))
                if prompt is not None:
                    return prompt
        keys = sorted(extra_info) if isinstance(extra_info, Mapping) else None
        raise ValueError(
            "Critic-RM needs the prompt, and verl passes it to reward functions only through "
            f"extra_info: store it under one of {list(self.prompt_keys)} in the dataset's "
            f"extra_info (got keys {keys})"
        )

    def _prompts(
        self, solution_strs: Sequence[str], extra_infos: Sequence[Any] | None
    ) -> list[Prompt]:
        """The prompt of each response of a batch, from its ``extra_info``."""
        infos: Sequence[Any] = [None] * len(solution_strs) if extra_infos is None else extra_infos
        if len(infos) != len(solution_strs):
            raise ValueError(f"{len(solution_strs)} solution_strs but {len(infos)} extra_infos")
        return [self._prompt(e) for e in infos]


class VerlComputeScore(_VerlShape):
    """verl's ``custom_reward_function`` for the reward loop (naive, dapo, limited, remote
    managers): ``(data_source, solution_str, ground_truth, extra_info) -> float`` per response;
    ``acall`` is the same as a coroutine function (verl awaits those on its loop)."""

    def __call__(
        self,
        data_source: Any,
        solution_str: str,
        ground_truth: Any,
        extra_info: Mapping[str, Any] | None = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> float:
        # reward_router_address/reward_model_tokenizer: verl adds them when it runs a reward
        # model of its own; this reward comes from the service.
        return self.rewards([(self._prompt(extra_info), solution_str)])[0]

    async def acall(
        self,
        data_source: Any,
        solution_str: str,
        ground_truth: Any,
        extra_info: Mapping[str, Any] | None = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> float:
        """``__call__`` without blocking the event loop."""
        return (await self.arewards([(self._prompt(extra_info), solution_str)]))[0]


class VerlBatchComputeScore(_VerlShape):
    """verl's legacy ``BatchRewardManager`` function (``reward_model.use_reward_loop=False``
    ``reward_model.reward_manager=batch``): ``(data_sources, solution_strs, ground_truths,
    extra_infos) -> list[float]``; the batch goes out in one client call."""

    def __call__(
        self,
        data_sources: Sequence[Any],
        solution_strs: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        prompts = self._prompts(solution_strs, extra_infos)
        return self.rewards(list(zip(prompts, solution_strs, strict=True)))


def make_verl_compute_score(url: str, **options: Any) -> VerlComputeScore:
    """``make_reward_function("verl", url, **options)``."""
    return build_adapter(VerlComputeScore, "verl", url, options)


def make_verl_batch_compute_score(url: str, **options: Any) -> VerlBatchComputeScore:
    """``make_reward_function("verl_batch", url, **options)``."""
    return build_adapter(VerlBatchComputeScore, "verl_batch", url, options)


# Module-level entry points for `custom_reward_function.path=pkg://critic_rm_client.adapters`:
# verl merges `reward_kwargs` into every call, so the adapter is built once per distinct setting.
_shared: dict[tuple[str, str], RewardFunction] = {}
_shared_lock = threading.Lock()


def _plain(value: Any) -> Any:
    # OmegaConf ListConfig/DictConfig arrive here from Hydra configs; plain types keep the
    # client's isinstance checks and the cache key simple.
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return tuple(_plain(v) for v in value)
    return value


def _shared_adapter(
    kind: type[RewardFunction], framework: str, settings: Mapping[str, Any]
) -> RewardFunction:
    config = {k: _plain(v) for k, v in settings.items()}
    url = config.pop("url", None) or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(
            f"no Critic-RM URL: pass custom_reward_function.reward_kwargs.url or set ${URL_ENV}"
        )
    if "api_key" not in config and os.environ.get(API_KEY_ENV):
        config["api_key"] = os.environ[API_KEY_ENV]
    key = (framework, repr((url, sorted(config.items()))))
    with _shared_lock:
        adapter = _shared.get(key)
        if adapter is None:
            adapter = _shared[key] = build_adapter(kind, framework, url, config)
    return adapter


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **reward_kwargs: Any,
) -> float:
    """verl ``custom_reward_function`` (sync; any reward-loop manager, ``remote`` included);
    ``reward_kwargs`` are the adapter options plus ``url`` (default ``$CRITIC_RM_URL``; the
    API key defaults to ``$CRITIC_RM_API_KEY``). An unknown one raises TypeError."""
    adapter = cast(VerlComputeScore, _shared_adapter(VerlComputeScore, "verl", reward_kwargs))
    return adapter(data_source, solution_str, ground_truth, extra_info)


async def compute_score_async(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **reward_kwargs: Any,
) -> float:
    """``compute_score`` as a coroutine function: verl's naive, dapo and limited managers await
    it on their event loop instead of holding a thread per response (``remote`` refuses it)."""
    adapter = cast(VerlComputeScore, _shared_adapter(VerlComputeScore, "verl", reward_kwargs))
    return await adapter.acall(data_source, solution_str, ground_truth, extra_info)


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **reward_kwargs: Any,
) -> list[float]:
    """verl's legacy batched entry point (``reward_model.use_reward_loop=False
    reward_model.reward_manager=batch``); settings as for ``compute_score``."""
    adapter = cast(
        VerlBatchComputeScore, _shared_adapter(VerlBatchComputeScore, "verl_batch", reward_kwargs)
    )
    return adapter(data_sources, solution_strs, ground_truths, extra_infos)
