"""What every reward function shares: the options it takes and their check, the settings built
from them, the lazily-built clients, and the empty-response reward (see
``critic_rm_client.adapters`` for the options and the empty-response rule)."""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from critic_rm_client import calls
from critic_rm_client.aio import AsyncRewardClient
from critic_rm_client.config import (
    SCORE_OPTION_NAMES,
    ClientConfig,
    check_names,
    client_option_names,
)
from critic_rm_client.errors import CriticRMError
from critic_rm_client.results import Prompt
from critic_rm_client.steps import Call
from critic_rm_client.sync import RewardClient

EMPTY_REWARD_STDS = 3.0
"""Default distance of the empty-response reward below the checkpoint's mean, in stds."""

_SCORE_NAMES = SCORE_OPTION_NAMES - {"return_critiques"}
_EMPTY_NAMES = frozenset({"empty_reward", "empty_reward_stds"})


def option_names() -> frozenset[str]:
    """Every option an adapter takes, besides its framework's own."""
    return _SCORE_NAMES | _EMPTY_NAMES | client_option_names()


@dataclass(frozen=True)
class RewardSettings:
    """What a reward function scores with, checked when it is built."""

    client: ClientConfig
    score_options: Mapping[str, Any]
    empty_reward: float | None
    empty_reward_stds: float

    @classmethod
    def build(cls, url: str, options: Mapping[str, Any]) -> RewardSettings:
        check_names(options, option_names(), "reward-function option")
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


def scatter(n: int, todo: Sequence[int], values: Sequence[float], fill: float) -> list[float]:
    """`values` (the scored responses, in `todo` order) back in place among `n`, `fill` for
    the rest."""
    out = [fill] * n
    for i, value in zip(todo, values, strict=True):
        out[i] = value
    return out


class RewardFunction:
    """The adapter every framework shape builds on: a lazily-built client (sync, or async per
    event loop), the scoring options, and the empty-response reward. Subclasses only map their
    framework's call to (prompt, response) pairs and shape the result."""

    EXTRA_OPTIONS: ClassVar[frozenset[str]] = frozenset()
    # False where the route scores at the checkpoint's defaults only, so that a scoring option
    # is refused rather than silently ignored.
    TAKES_SCORE_OPTIONS: ClassVar[bool] = True
    # False where a reward is not on the reward head's scale (a win rate), so the empty-response
    # options have nothing to set.
    TAKES_EMPTY_OPTIONS: ClassVar[bool] = True

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
        todo = [i for i, (_, response) in enumerate(pairs) if response.strip()]
        rewards: list[float] = []
        version = None
        if todo:
            result = yield from calls.score(
                self.settings.client, [pairs[i] for i in todo], self.settings.score_options
            )
            rewards, version = result.rewards, result.model_version
        empty = (yield from self._empty_reward(version)) if len(todo) < len(pairs) else 0.0
        return scatter(len(pairs), todo, rewards, empty)

    def _empty_reward(self, version: str | None) -> Call[float]:
        if self.settings.empty_reward is not None:
            return self.settings.empty_reward
        cached = self._empty
        # A batch of only empty responses names no version: the last one seen stands.
        if cached is not None and version in (None, cached[0]):
            return cached[1]
        info = yield from calls.info(self.settings.client)
        value = empty_reward_from_info(info, self.settings.empty_reward_stds)
        self._empty = (str(info.get("model_version")), value)
        return value


R = TypeVar("R", bound=RewardFunction)


def build_adapter(kind: type[R], framework: str, url: str, options: dict[str, Any]) -> R:
    """A ``kind`` adapter for ``framework`` scoring with the service at ``url``: ``options``
    checked against the ones ``kind`` takes, then split into its own and the settings."""
    known = option_names() | kind.EXTRA_OPTIONS
    if not kind.TAKES_SCORE_OPTIONS:
        known -= _SCORE_NAMES
    if not kind.TAKES_EMPTY_OPTIONS:
        known -= _EMPTY_NAMES
    check_names(options, known, f"{framework} reward-function option")
    extras = {k: options.pop(k) for k in kind.EXTRA_OPTIONS if k in options}
    return kind(RewardSettings.build(url, options), **extras)
