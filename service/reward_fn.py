"""Critic-RM as a reward function for TRL and verl, over the sync client (``service.client``).

**TRL** (``GRPOTrainer(reward_funcs=...)``)::

    from service.reward_fn import make_trl_reward_func

    reward = make_trl_reward_func("http://critic-rm:8000", num_critiques=4, api_key="...")
    trainer = GRPOTrainer(model=..., reward_funcs=reward, train_dataset=...)

TRL calls ``reward(prompts=..., completions=..., completion_ids=..., trainer_state=...,
**dataset_columns)`` and expects one float (or ``None``: "not applicable", logged as NaN) per
completion. Prompts and completions are strings (standard datasets) or lists of
``{"role", "content"}`` messages (conversational datasets); for a conversational completion the
text of its assistant messages is scored. The callable's ``__name__`` (default ``critic_rm``)
names TRL's ``rewards/<name>/mean`` metrics.

**verl** (``custom_reward_function``): verl calls
``compute_score(data_source, solution_str, ground_truth, extra_info)`` per response and never
passes the prompt, so the prompt must be in ``extra_info`` (first of ``extra_info["prompt"]``, then
``extra_info["question"]``, as verl's GSM8K preprocessing stores it; ``prompt_keys`` changes the
order). ``ground_truth`` and ``data_source`` are ignored: Critic-RM judges the response itself.
Either write a file with ``compute_score = make_verl_compute_score(url, ...)``, or point verl at
this module and pass the settings as ``reward_kwargs``::

    custom_reward_function.path=pkg://service.reward_fn
    custom_reward_function.name=compute_score          # or compute_score_batch with
    +custom_reward_function.reward_kwargs.url=http://critic-rm:8000   # reward_manager=batch
    +custom_reward_function.reward_kwargs.num_critiques=4

(``url`` falls back to ``$CRITIC_RM_URL`` and ``api_key`` to ``$CRITIC_RM_API_KEY``.)
``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)`` matches verl's
``BatchRewardManager`` and scores the whole batch in one ``score`` call (split and sent
concurrently by the client), which is much faster than one request per response.

**All of these block**: each call waits for the service (retries included, bounded by
``deadline_s`` and the client's timeouts) on the calling thread. verl's reward loop already runs
sync reward functions in a thread pool; TRL waits for its reward functions anyway. The adapters
are thread-safe and picklable (the HTTP client is built lazily in each process), so they can be
shipped to Ray or multiprocessing workers.

An empty response cannot be scored (the service refuses it with a 422, which would fail the
whole batch), so it gets ``empty_reward`` without a request: ``None`` for TRL by default (TRL
treats it as "not applicable"), ``0.0`` for verl (which needs a number). In RL an empty
completion is usually bad: set ``empty_reward`` to a low value on your reward scale.
Prompts that do not fit the model context are left-truncated (``truncate_prompt=True``) rather
than failing the training step with a 422; pass ``truncate_prompt=False`` to get the error.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from service.client import CriticRMClient, Prompt, message_text

__all__ = [
    "TRLRewardFunc",
    "VerlBatchComputeScore",
    "VerlComputeScore",
    "compute_score",
    "compute_score_batch",
    "make_trl_reward_func",
    "make_verl_batch_compute_score",
    "make_verl_compute_score",
]

URL_ENV = "CRITIC_RM_URL"
API_KEY_ENV = "CRITIC_RM_API_KEY"


# The ``CriticRMClient.score`` options the adapters take, with their defaults (prompts too long
# for the model context are left-truncated rather than failing the training step); an adapter's
# other keyword arguments go to ``CriticRMClient``.
_SCORE_OPTIONS: Mapping[str, Any] = {
    "num_critiques": None,
    "temperature": None,
    "top_p": None,
    "max_critique_tokens": None,
    "truncate_prompt": True,
    "use_cache": None,
    "deadline_s": None,
}


class _Adapter:
    """A lazily-built ``CriticRMClient`` plus the scoring options of one reward function."""

    def __init__(self, url: str, *, empty_reward: float | None, **kwargs: Any) -> None:
        self.url = url
        self.empty_reward = empty_reward
        self.score_options: dict[str, Any] = {
            key: kwargs.pop(key, default) for key, default in _SCORE_OPTIONS.items()
        }
        self.client_kwargs = kwargs
        self._client: CriticRMClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> CriticRMClient:
        """The HTTP client, built on first use in this process."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = CriticRMClient(self.url, **self.client_kwargs)
        return self._client

    def close(self) -> None:
        """Close the HTTP client (a later call builds a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getstate__(self) -> dict[str, Any]:
        # Connection pools and locks do not survive pickling (Ray, multiprocessing spawn);
        # each process builds its own client on first use.
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _rewards(self, pairs: Sequence[tuple[Prompt, str]]) -> list[float | None]:
        out: list[float | None] = [self.empty_reward] * len(pairs)
        todo = [i for i, (_, response) in enumerate(pairs) if response.strip()]
        if todo:
            result = self.client.score([pairs[i] for i in todo], **self.score_options)
            for i, reward in zip(todo, result.rewards, strict=True):
                out[i] = reward
        return out


# --------------------------------------------------------------------------- TRL


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


class TRLRewardFunc(_Adapter):
    """A TRL ``GRPOTrainer`` reward function: ``(prompts, completions, **kwargs) -> rewards``.

    Build it with ``make_trl_reward_func``. Blocks until the service answers.
    """

    __name__: str

    def __init__(
        self, url: str, *, name: str = "critic_rm", empty_reward: float | None = None, **kw: Any
    ) -> None:
        super().__init__(url, empty_reward=empty_reward, **kw)
        self.__name__ = name

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        # kwargs carries completion_ids, trainer_state, log_extra, log_metric and the dataset's
        # other columns; the reward needs none of them.
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = [
            (_trl_prompt(p), _completion_text(c)) for p, c in zip(prompts, completions, strict=True)
        ]
        return self._rewards(pairs)

    def __repr__(self) -> str:
        return f"TRLRewardFunc({self.__name__!r}, url={self.url!r})"


def make_trl_reward_func(
    url: str,
    *,
    name: str = "critic_rm",
    num_critiques: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_critique_tokens: int | None = None,
    truncate_prompt: bool | None = True,
    use_cache: bool | None = None,
    deadline_s: float | None = None,
    empty_reward: float | None = None,
    **client_kwargs: Any,
) -> TRLRewardFunc:
    """A reward function for TRL's ``GRPOTrainer`` scoring with the service at ``url``.

    Sampling options default to the checkpoint's (``num_critiques`` is m); ``client_kwargs``
    go to ``CriticRMClient`` (``api_key``, ``max_batch_items``, ``max_retries``, ...).
    """
    return TRLRewardFunc(
        url,
        name=name,
        empty_reward=empty_reward,
        num_critiques=num_critiques,
        temperature=temperature,
        top_p=top_p,
        max_critique_tokens=max_critique_tokens,
        truncate_prompt=truncate_prompt,
        use_cache=use_cache,
        deadline_s=deadline_s,
        **client_kwargs,
    )


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


class _VerlAdapter(_Adapter):
    def __init__(
        self,
        url: str,
        *,
        prompt_keys: Sequence[str] = ("prompt", "question"),
        empty_reward: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(url, empty_reward=float(empty_reward), **kw)
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

    def _floats(self, pairs: Sequence[tuple[Prompt, str]]) -> list[float]:
        fallback = float(self.empty_reward or 0.0)
        return [fallback if r is None else float(r) for r in self._rewards(pairs)]


class VerlComputeScore(_VerlAdapter):
    """verl ``custom_reward_function``: ``(data_source, solution_str, ground_truth,
    extra_info=None, **kwargs) -> float``; one request per call. Blocks."""

    def __call__(
        self,
        data_source: Any,
        solution_str: str,
        ground_truth: Any,
        extra_info: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> float:
        # kwargs: verl's reward loop may add reward_router_address / reward_model_tokenizer.
        return self._floats([(self._prompt(extra_info), solution_str)])[0]


class VerlBatchComputeScore(_VerlAdapter):
    """verl ``BatchRewardManager`` function: ``(data_sources, solution_strs, ground_truths,
    extra_infos, **kwargs) -> list[float]``; the batch goes out in one client call. Blocks."""

    def __call__(
        self,
        data_sources: Sequence[Any],
        solution_strs: Sequence[str],
        ground_truths: Sequence[Any],
        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        infos: Sequence[Any] = [None] * len(solution_strs) if extra_infos is None else extra_infos
        if len(infos) != len(solution_strs):
            raise ValueError(f"{len(solution_strs)} solution_strs but {len(infos)} extra_infos")
        pairs = [(self._prompt(e), s) for e, s in zip(infos, solution_strs, strict=True)]
        return self._floats(pairs)


def make_verl_compute_score(
    url: str,
    *,
    prompt_keys: Sequence[str] = ("prompt", "question"),
    num_critiques: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_critique_tokens: int | None = None,
    truncate_prompt: bool | None = True,
    use_cache: bool | None = None,
    deadline_s: float | None = None,
    empty_reward: float = 0.0,
    **client_kwargs: Any,
) -> VerlComputeScore:
    """verl's per-response ``compute_score`` over the service at ``url``; the prompt is read
    from ``extra_info[k]`` for the first ``k`` in ``prompt_keys`` that holds text or messages."""
    return VerlComputeScore(
        url,
        prompt_keys=prompt_keys,
        empty_reward=empty_reward,
        num_critiques=num_critiques,
        temperature=temperature,
        top_p=top_p,
        max_critique_tokens=max_critique_tokens,
        truncate_prompt=truncate_prompt,
        use_cache=use_cache,
        deadline_s=deadline_s,
        **client_kwargs,
    )


def make_verl_batch_compute_score(
    url: str,
    *,
    prompt_keys: Sequence[str] = ("prompt", "question"),
    num_critiques: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_critique_tokens: int | None = None,
    truncate_prompt: bool | None = True,
    use_cache: bool | None = None,
    deadline_s: float | None = None,
    empty_reward: float = 0.0,
    **client_kwargs: Any,
) -> VerlBatchComputeScore:
    """verl's batched ``compute_score`` (``reward_model.reward_manager=batch``)."""
    return VerlBatchComputeScore(
        url,
        prompt_keys=prompt_keys,
        empty_reward=empty_reward,
        num_critiques=num_critiques,
        temperature=temperature,
        top_p=top_p,
        max_critique_tokens=max_critique_tokens,
        truncate_prompt=truncate_prompt,
        use_cache=use_cache,
        deadline_s=deadline_s,
        **client_kwargs,
    )


# Module-level entry points for `custom_reward_function.path=pkg://service.reward_fn`: verl
# merges `reward_kwargs` into every call, so the adapter is built once per distinct setting.
_CONFIG_KEYS = frozenset(
    {
        "url",
        "prompt_keys",
        *_SCORE_OPTIONS,
        "empty_reward",
        "api_key",
        "max_batch_items",
        "max_concurrency",
        "max_retries",
        "backoff_base_s",
        "max_backoff_s",
        "connect_timeout_s",
        "read_timeout_s",
        "retry_statuses",
        "headers",
    }
)
_shared: dict[tuple[str, str], _VerlAdapter] = {}
_V = TypeVar("_V", bound=_VerlAdapter)
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


def _shared_adapter(kind: type[_V], kwargs: Mapping[str, Any]) -> _V:
    config = {k: _plain(v) for k, v in kwargs.items() if k in _CONFIG_KEYS}
    url = config.pop("url", None) or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(
            f"no Critic-RM URL: pass custom_reward_function.reward_kwargs.url or set ${URL_ENV}"
        )
    if "api_key" not in config and os.environ.get(API_KEY_ENV):
        config["api_key"] = os.environ[API_KEY_ENV]
    key = (kind.__name__, repr((url, sorted(config.items()))))
    with _shared_lock:
        adapter = _shared.get(key)
        if adapter is None:
            adapter = _shared[key] = kind(url, **config)
    assert isinstance(adapter, kind)
    return adapter


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl ``custom_reward_function`` entry point; settings come from ``reward_kwargs``
    (``url``, ``num_critiques``, ``api_key``, ...; see ``make_verl_compute_score``)."""
    adapter = _shared_adapter(VerlComputeScore, kwargs)
    return adapter(data_source, solution_str, ground_truth, extra_info)


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """verl batched entry point (``reward_model.reward_manager=batch``); settings as for
    ``compute_score``."""
    adapter = _shared_adapter(VerlBatchComputeScore, kwargs)
    return adapter(data_sources, solution_strs, ground_truths, extra_infos)
