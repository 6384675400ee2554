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
- per framework: ``name`` (TRL: the ``rewards/<name>/mean`` metric), ``prompt_keys`` (verl).

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
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from critic_rm_client import core
from critic_rm_client.aio import AsyncRewardClient
from critic_rm_client.core import Call, ClientConfig
from critic_rm_client.errors import CriticRMError
from critic_rm_client.results import Prompt
from critic_rm_client.sync import RewardClient

__all__ = [
    "EMPTY_REWARD_STDS",
    "OpenRLHFRewardFunc",
    "RewardFunction",
    "RewardSettings",
    "TRLRewardFunc",
    "VerlBatchComputeScore",
    "VerlComputeScore",
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "empty_reward_from_info",
    "make_openrlhf_reward_func",
    "make_reward_function",
    "make_trl_reward_func",
    "make_verl_batch_compute_score",
    "make_verl_compute_score",
]

URL_ENV = "CRITIC_RM_URL"
API_KEY_ENV = "CRITIC_RM_API_KEY"
EMPTY_REWARD_STDS = 3.0
"""Default distance of the empty-response reward below the checkpoint's mean, in stds."""

_SCORE_NAMES = core.SCORE_OPTION_NAMES - {"return_critiques"}
_EMPTY_NAMES = frozenset({"empty_reward", "empty_reward_stds"})


def option_names() -> frozenset[str]:
    """Every option an adapter takes, besides its framework's own."""
    return _SCORE_NAMES | _EMPTY_NAMES | core.client_option_names()


# --------------------------------------------------------------------------- the one factory


@dataclass(frozen=True)
class RewardSettings:
    """What a reward function scores with, checked when it is built."""

    client: ClientConfig
    score_options: Mapping[str, Any]
    empty_reward: float | None
    empty_reward_stds: float

    @classmethod
    def build(cls, url: str, options: Mapping[str, Any]) -> RewardSettings:
        core.check_names(options, option_names(), "reward-function option")
        score = {k: v for k, v in options.items() if k in _SCORE_NAMES}
        score.setdefault("truncate_prompt", True)
        empty = options.get("empty_reward")
        if empty is not None and not math.isfinite(float(empty)):
            raise ValueError(f"empty_reward must be a finite number, not {empty!r}")
        client = {k: v for k, v in options.items() if k not in _SCORE_NAMES | _EMPTY_NAMES}
        return cls(
            client=ClientConfig.build(url, client),
            score_options=score,
            empty_reward=None if empty is None else float(empty),
            empty_reward_stds=float(options.get("empty_reward_stds", EMPTY_REWARD_STDS)),
        )


def empty_reward_from_info(info: Mapping[str, Any], stds: float = EMPTY_REWARD_STDS) -> float:
    """``mean - stds * std`` of the served checkpoint's reward statistics (``GET /info``)."""
    stats = info.get("reward_stats")
    mean = stats.get("mean") if isinstance(stats, Mapping) else None
    std = stats.get("std") if isinstance(stats, Mapping) else None
    if not isinstance(mean, int | float) or not isinstance(std, int | float):
        raise CriticRMError(
            f"checkpoint {info.get('model_version')!r} publishes no reward statistics "
            "(GET /info reward_stats is null), so an empty response has no reward on its "
            "scale: pass empty_reward=<a low reward> to the adapter"
        )
    return float(mean) - stds * float(std)


class RewardFunction:
    """The adapter every framework shape builds on: a lazily-built client (sync, or async per
    event loop), the scoring options, and the empty-response reward. Subclasses only map their
    framework's call to (prompt, response) pairs and shape the result."""

    EXTRA_OPTIONS: ClassVar[frozenset[str]] = frozenset()
    # False where the route scores at the checkpoint's defaults only, so that a scoring option
    # is refused rather than silently ignored.
    TAKES_SCORE_OPTIONS: ClassVar[bool] = True

    def __init__(self, settings: RewardSettings) -> None:
        self.settings = settings
        self._client: RewardClient | None = None
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRewardClient]
        self._aclients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._empty: tuple[str, float] | None = None  # (model version, its empty reward)

    @property
    def url(self) -> str:
        return self.settings.client.base_url

    @property
    def client(self) -> RewardClient:
        """The sync HTTP client, built on first use in this process."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = RewardClient(self.settings.client)
        return self._client

    def _async_client(self) -> AsyncRewardClient:
        # An httpx.AsyncClient belongs to the loop it first ran on; verl runs one per worker.
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.get(loop)
            if client is None:
                client = self._aclients[loop] = AsyncRewardClient(self.settings.client)
        return client

    def rewards(self, pairs: Sequence[tuple[Prompt, str]]) -> list[float]:
        """One reward per (prompt, response) pair; empty responses get the empty reward."""
        return self.client.run(self._rewards(pairs))

    async def arewards(self, pairs: Sequence[tuple[Prompt, str]]) -> list[float]:
        """``rewards`` on the running event loop."""
        return await self._async_client().run(self._rewards(pairs))

    def close(self) -> None:
        """Close the sync HTTP client (a later call builds a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getstate__(self) -> dict[str, Any]:
        # Connection pools, loops and locks do not survive pickling (Ray, multiprocessing
        # spawn); each process builds its own client on first use.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_empty"] = None
        del state["_lock"], state["_aclients"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._aclients = weakref.WeakKeyDictionary()

    def _rewards(self, pairs: Sequence[tuple[Prompt, str]]) -> Call[list[float]]:
        out = [0.0] * len(pairs)
        todo = [i for i, (_, response) in enumerate(pairs) if response.strip()]
        version = None
        if todo:
            result = yield from core.score(
                self.settings.client, [pairs[i] for i in todo], self.settings.score_options
            )
            for i, reward in zip(todo, result.rewards, strict=True):
                out[i] = reward
            version = result.model_version
        if len(todo) < len(pairs):
            empty = yield from self._empty_reward(version)
            done = set(todo)
            out = [r if i in done else empty for i, r in enumerate(out)]
        return out

    def _empty_reward(self, version: str | None) -> Call[float]:
        if self.settings.empty_reward is not None:
            return self.settings.empty_reward
        cached = self._empty
        # A batch of only empty responses names no version: the last one seen stands.
        if cached is not None and version in (None, cached[0]):
            return cached[1]
        info = yield from core.info(self.settings.client)
        value = empty_reward_from_info(info, self.settings.empty_reward_stds)
        self._empty = (str(info.get("model_version")), value)
        return value


def make_reward_function(framework: str, url: str, **options: Any) -> RewardFunction:
    """The reward function for ``framework`` (``trl``, ``verl``, ``verl_batch``, ``openrlhf``)
    scoring with the service at ``url``; the options are in this module's docstring."""
    kind = FRAMEWORKS.get(framework)
    if kind is None:
        raise ValueError(f"unknown framework {framework!r}: one of {', '.join(FRAMEWORKS)}")
    known = option_names() | kind.EXTRA_OPTIONS
    if not kind.TAKES_SCORE_OPTIONS:
        known -= _SCORE_NAMES
    core.check_names(options, known, f"{framework} reward-function option")
    extras = {k: options.pop(k) for k in kind.EXTRA_OPTIONS if k in options}
    return kind(RewardSettings.build(url, options), **extras)


# --------------------------------------------------------------------------- TRL


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    # Conversational: usually one assistant message; with tool use, the assistant turns
    # interleave with tool results, and only what the policy wrote is scored.
    texts = [
        core.message_text(m.get("content"))
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
    return cast(TRLRewardFunc, make_reward_function("trl", url, **options))


# --------------------------------------------------------------------------- verl


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
        infos: Sequence[Any] = [None] * len(solution_strs) if extra_infos is None else extra_infos
        if len(infos) != len(solution_strs):
            raise ValueError(f"{len(solution_strs)} solution_strs but {len(infos)} extra_infos")
        return self.rewards(
            [(self._prompt(e), s) for e, s in zip(infos, solution_strs, strict=True)]
        )


def make_verl_compute_score(url: str, **options: Any) -> VerlComputeScore:
    """``make_reward_function("verl", url, **options)``."""
    return cast(VerlComputeScore, make_reward_function("verl", url, **options))


def make_verl_batch_compute_score(url: str, **options: Any) -> VerlBatchComputeScore:
    """``make_reward_function("verl_batch", url, **options)``."""
    return cast(VerlBatchComputeScore, make_reward_function("verl_batch", url, **options))


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


def _shared_adapter(framework: str, settings: Mapping[str, Any]) -> RewardFunction:
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
            adapter = _shared[key] = make_reward_function(framework, url, **config)
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
    adapter = cast(VerlComputeScore, _shared_adapter("verl", reward_kwargs))
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
    adapter = cast(VerlComputeScore, _shared_adapter("verl", reward_kwargs))
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
    adapter = cast(VerlBatchComputeScore, _shared_adapter("verl_batch", reward_kwargs))
    return adapter(data_sources, solution_strs, ground_truths, extra_infos)


# --------------------------------------------------------------------------- OpenRLHF

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
        rewards = [0.0] * len(queries)
        logs: dict[str, list[float]] = {}
        if todo:
            result = yield from core.get_reward(
                self.settings.client, [queries[i] for i in todo], [prompts[i] for i in todo]
            )
            for i, reward in zip(todo, result.rewards, strict=True):
                rewards[i] = reward
            for key, values in result.extra_logs.items():
                logs[key] = [0.0] * len(queries)
                for i, value in zip(todo, values, strict=True):
                    logs[key][i] = value
        if len(todo) < len(queries):
            value = yield from self._empty_reward(None)  # /get_reward names no version
            done = set(todo)
            rewards = [r if i in done else value for i, r in enumerate(rewards)]
        return {"rewards": rewards, "scores": list(rewards), "extra_logs": logs}


def make_openrlhf_reward_func(url: str, **options: Any) -> OpenRLHFRewardFunc:
    """``make_reward_function("openrlhf", url, **options)``: the empty-reward and client
    options only (``/get_reward`` samples at the checkpoint's defaults)."""
    return cast(OpenRLHFRewardFunc, make_reward_function("openrlhf", url, **options))


FRAMEWORKS: dict[str, type[RewardFunction]] = {
    "trl": TRLRewardFunc,
    "verl": VerlComputeScore,
    "verl_batch": VerlBatchComputeScore,
    "openrlhf": OpenRLHFRewardFunc,
}
