"""A request's deadline and its cancellation: the X-Request-Timeout header (or the default)
bounds the work, and a client that disconnects takes its queued items with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request, Response

from service.api.errors import error_response
from service.scoring.errors import InvalidRequest

T = TypeVar("T")

DEADLINE_HEADER = "X-Request-Timeout"


@dataclass(frozen=True)
class RequestDeadline:
    """When a request gives up (`at`, on the event loop's clock), and how its work is run."""

    request: Request
    at: float

    async def run(self, work: Callable[[float], Awaitable[T]]) -> T | Response:
        """Run `work(deadline)`, but drop it (and its queued items) if the client disconnects."""
        task = asyncio.ensure_future(work(self.at))
        watcher = asyncio.ensure_future(_until_disconnected(self.request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the handler itself was cancelled: its queued items must go too
            task.add_done_callback(_retrieve)
            raise
        finally:
            watcher.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.request.app.state.metrics.request_failures.labels("client_disconnected").inc()
        return error_response(499, "client_closed_request", "client disconnected")


async def request_deadline(
    request: Request,
    timeout: Annotated[float | None, Header(alias=DEADLINE_HEADER)] = None,
) -> RequestDeadline:
    """The request's deadline (header, else the default)."""
    settings = request.app.state.settings
    value = settings.request_timeout_s if timeout is None else timeout
    if not 0 < value <= settings.max_request_timeout_s:
        raise InvalidRequest(
            DEADLINE_HEADER, f"must be in (0, {settings.max_request_timeout_s}] seconds"
        )
    return RequestDeadline(request, asyncio.get_running_loop().time() + value)


Deadline = Annotated[RequestDeadline, Depends(request_deadline)]


async def _until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Nobody waits for an abandoned handler's outcome: mark it seen (no asyncio warning)."""
    if not task.cancelled():
        task.exception()
