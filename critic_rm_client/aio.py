"""``AsyncRewardClient``: the calls (``critic_rm_client.calls``) driven over ``httpx.AsyncClient``, split requests as
tasks under a semaphore."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
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
from critic_rm_client.steps import Action, Call, Gather, Send, Sleep, raise_first

if TYPE_CHECKING:
    from typing import Unpack

    from critic_rm_client.config import (
        CompareOptions,
        CritiqueOptions,
        RefineOptions,
        ScoreOptions,
    )

T = TypeVar("T")


class AsyncRewardClient:
    """Asyncio Critic-RM client; same arguments and behaviour as ``RewardClient``. Use it from
    one event loop; ``sleep`` is an async callable."""

    def __init__(
        self,
        base_url: str | ClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **options: Any,
    ) -> None:
        self.config = ClientConfig.build(base_url, options)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **self.config.http_options())

    @property
    def base_url(self) -> str:
        return self.config.base_url

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- API (see RewardClient)

    async def score(
        self,
        items: Sequence[ScoreItemLike],
        *,
        deadline_s: float | None = None,
        **options: Unpack[ScoreOptions],
    ) -> ScoreResult:
        """Score (prompt, response) items; see ``RewardClient.score``."""
        return await self.run(calls.score(self.config, items, options, deadline_s))

    async def critique(
        self,
        prompt: Prompt,
        response: str,
        n: int | None = None,
        *,
        deadline_s: float | None = None,
        **options: Unpack[CritiqueOptions],
    ) -> CritiqueResult:
        """Sample ``n`` critiques of one response and their rewards."""
        return await self.run(calls.critique(self.config, prompt, response, n, options, deadline_s))

    async def refine(
        self,
        prompt: Prompt,
        response: str,
        *,
        deadline_s: float | None = None,
        **options: Unpack[RefineOptions],
    ) -> RefineResult:
        """Critique-revision rounds over one response (``rounds``, ``candidates``, ``stop``,
        ``policy``): the best response, the trajectory and why it stopped."""
        return await self.run(calls.refine(self.config, prompt, response, options, deadline_s))

    async def compare(
        self,
        prompt: Prompt,
        responses: Sequence[str],
        *,
        deadline_s: float | None = None,
        **options: Unpack[CompareOptions],
    ) -> CompareResult:
        """Judge every pair of 2-4 responses through criteria, rubrics and scores, in both
        orders (``criteria``, ``num_criteria``, ``samples``); a ranking for more than two."""
        return await self.run(calls.compare(self.config, prompt, responses, options, deadline_s))

    async def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> RewardsResult:
        """OpenRLHF's ``/get_reward``; see ``RewardClient.get_reward``."""
        return await self.run(calls.get_reward(self.config, queries, prompts, deadline_s))

    async def ready(self) -> ReadyStatus:
        """``GET /ready`` once, without retries; see ``RewardClient.ready``."""
        return await self.run(calls.ready())

    async def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> ReadyStatus:
        """Poll ``/ready`` until ready; see ``RewardClient.wait_ready``."""
        return await self.run(calls.wait_ready(timeout_s, poll_s))

    async def info(self) -> dict[str, Any]:
        """``GET /info`` (retried like ``score``)."""
        return await self.run(calls.info(self.config))

    # -- the loop

    async def run(self, call: Call[T]) -> T:
        """Drive a call to its result on the running event loop."""
        answer: Any = None
        error: Exception | None = None
        while True:
            try:
                action = call.send(answer) if error is None else call.throw(error)
            except StopIteration as done:
                return done.value
            answer, error = None, None
            try:
                answer = await self._perform(action)
            except Exception as exc:
                error = exc

    async def _perform(self, action: Action) -> Any:
        if isinstance(action, Send):
            return await self._http.request(action.method, action.path, **action.kwargs())
        if isinstance(action, Sleep):
            await self._sleep(action.seconds)
            return None
        return await self._gather(action)

    async def _gather(self, action: Gather) -> list[Any]:
        # Per call, not per client: the semaphore must belong to the running loop, and a
        # client-wide cap would throttle many small concurrent calls that the server batches.
        gate = asyncio.Semaphore(action.limit)

        async def one(call: Call[Any]) -> Any:
            async with gate:
                return await self.run(call)

        if len(action.calls) == 1:
            return [await one(action.calls[0])]
        tasks = [asyncio.ensure_future(one(c)) for c in action.calls]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            raise_first(t.exception() for t in tasks if t.done())
            return [t.result() for t in tasks]
        finally:
            pending = [t for t in tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
