"""``RewardClient``: the calls (``critic_rm_client.calls``) driven over ``httpx.Client``, split requests on threads."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from critic_rm_client import calls
from critic_rm_client.config import ClientConfig
from critic_rm_client.results import (
    CompareResult,
    CritiqueResult,
    Prompt,
    ReadyStatus,
    RefineResult,
    RewardsResult,
    ScoreItemLike,
    ScoreResult,
)
from critic_rm_client.steps import Action, Call, Cancelled, Gather, Send, Sleep, raise_first

if TYPE_CHECKING:
    from typing import Unpack

    from critic_rm_client.config import (
        CompareOptions,
        CritiqueOptions,
        RefineOptions,
        ScoreOptions,
    )

T = TypeVar("T")


class RewardClient:
    """Synchronous Critic-RM client; thread-safe, one per process is enough.

    ``RewardClient(url, api_key=..., max_batch_items=..., ...)`` takes the ``ClientConfig``
    fields as keywords (or a ``ClientConfig`` in place of the URL); ``transport`` is an httpx
    transport (tests, proxies, custom TLS) and ``sleep`` how to wait between retries.
    """

    def __init__(
        self,
        base_url: str | ClientConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> None:
        self.config = ClientConfig.build(base_url, options)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **self.config.http_options())

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API

    def score(
        self,
        items: Sequence[ScoreItemLike],
        *,
        deadline_s: float | None = None,
        **options: Unpack[ScoreOptions],
    ) -> ScoreResult:
        """Score (prompt, response) items, all with one ``model_version`` (see ``critic_rm_client.calls``);
        options: ``num_critiques``, ``temperature``, ``top_p``, ``max_critique_tokens``,
        ``return_critiques``, ``truncate_prompt``, ``use_cache``."""
        return self.run(calls.score(self.config, items, options, deadline_s))

    def critique(
        self,
        prompt: Prompt,
        response: str,
        n: int | None = None,
        *,
        deadline_s: float | None = None,
        **options: Unpack[CritiqueOptions],
    ) -> CritiqueResult:
        """Sample ``n`` critiques of one response and their rewards (why the reward is what it is)."""
        return self.run(calls.critique(self.config, prompt, response, n, options, deadline_s))

    def refine(
        self,
        prompt: Prompt,
        response: str,
        *,
        deadline_s: float | None = None,
        **options: Unpack[RefineOptions],
    ) -> RefineResult:
        """Critique-revision rounds over one response (``rounds``, ``candidates``, ``stop``,
        ``policy``): the best response, the trajectory and why it stopped."""
        return self.run(calls.refine(self.config, prompt, response, options, deadline_s))

    def compare(
        self,
        prompt: Prompt,
        responses: Sequence[str],
        *,
        deadline_s: float | None = None,
        **options: Unpack[CompareOptions],
    ) -> CompareResult:
        """Judge every pair of 2-4 responses through criteria, rubrics and scores, in both
        orders (``criteria``, ``num_criteria``, ``samples``); a ranking for more than two."""
        return self.run(calls.compare(self.config, prompt, responses, options, deadline_s))

    def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> RewardsResult:
        """OpenRLHF's ``/get_reward`` over rendered prompt+response texts, split like ``score``."""
        return self.run(calls.get_reward(self.config, queries, prompts, deadline_s))

    def ready(self) -> ReadyStatus:
        """``GET /ready`` once, without retries; 503 is a not-ready status, not an error.
        Raises ``CriticRMUnavailable`` if the service cannot be reached."""
        return self.run(calls.ready())

    def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> ReadyStatus:
        """Poll ``/ready`` until ready; raises ``CriticRMUnavailable`` after ``timeout_s`` or a
        ``CriticRMError`` at once if the service reports ``failed``."""
        return self.run(calls.wait_ready(timeout_s, poll_s))

    def info(self) -> dict[str, Any]:
        """``GET /info``: model version, defaults, limits, reward statistics (retried)."""
        return self.run(calls.info(self.config))

    # -- the loop

    def run(self, call: Call[T], stop: threading.Event | None = None) -> T:
        """Drive a call to its result on this thread."""
        answer: Any = None
        error: Exception | None = None
        while True:
            try:
                action = call.send(answer) if error is None else call.throw(error)
            except StopIteration as done:
                return done.value
            answer, error = None, None
            try:
                answer = self._perform(action, stop)
            except Exception as exc:
                error = exc

    def _perform(self, action: Action, stop: threading.Event | None) -> Any:
        if isinstance(action, Send):
            return self._http.request(action.method, action.path, **action.kwargs())
        if isinstance(action, Sleep):
            if stop is not None and stop.is_set():
                raise Cancelled
            self._sleep(action.seconds)
            return None
        return self._gather(action)

    def _gather(self, action: Gather) -> list[Any]:
        calls = action.calls
        workers = min(action.limit, len(calls))
        if workers == 1:
            return [self.run(c) for c in calls]
        stop = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="critic-rm")
        futures = [pool.submit(self.run, c, stop) for c in calls]
        try:
            done, _ = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            raise_first(f.exception() for f in futures if f in done)
            return [f.result() for f in futures]
        finally:
            # On failure, do not wait for siblings still backing off: they see `stop` and quit.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
