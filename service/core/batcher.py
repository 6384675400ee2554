"""Micro-batcher: groups items of concurrent requests into engine batches.

Waits for a first item, then fills the batch up to an item cap and a token budget, or until the
first item has waited `max_wait_s`. Results go back by position. A failing batch fails every
future of that batch and the loop keeps running; items whose caller went away are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Entry(Generic[T, R]):
    item: T
    cost: int
    future: asyncio.Future[R]
    enqueued_at: float


@dataclass
class BatchInfo:
    """What the processor learns about the batch it runs."""

    queue_waits: list[float] = field(default_factory=list)


class MicroBatcher(Generic[T, R]):
    """Queue + futures; one batch runs at a time (engines on a small CPU should not overlap)."""

    def __init__(
        self,
        process: Callable[[list[T], BatchInfo], Awaitable[Sequence[R | BaseException]]],
        *,
        max_items: int,
        max_tokens: int,
        max_wait_s: float,
        cost: Callable[[T], int] = lambda _item: 1,
        clock: Callable[[], float] = time.monotonic,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._process = process
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self._cost = cost
        self._clock = clock
        self._on_depth = on_depth
        self._queue: asyncio.Queue[_Entry[T, R]] = asyncio.Queue()
        self._held: _Entry[T, R] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (1 if self._held else 0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if not entry.future.done():
                entry.future.set_exception(RuntimeError("service is shutting down"))

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result. Cancelling the caller drops the item."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Entry(item, self._cost(item), future, self._clock()))
        self._report_depth()
        return await future

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth)

    async def _next(self, timeout: float | None) -> _Entry[T, R] | None:
        if self._held is not None:
            entry, self._held = self._held, None
            return entry
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait() if not self._queue.empty() else None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Entry[T, R]]:
        batch: list[_Entry[T, R]] = []
        tokens = 0
        deadline: float | None = None
        while len(batch) < self.max_items:
            timeout = None if deadline is None else deadline - self._clock()
            entry = await self._next(timeout)
            if entry is None:
                break
            if entry.future.done():  # caller went away (cancelled) before we started
                continue
            if batch and tokens + entry.cost > self.max_tokens:
                self._held = entry  # first in the next batch
                break
            batch.append(entry)
            tokens += entry.cost
            if deadline is None:
                deadline = entry.enqueued_at + self.max_wait_s
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            self._report_depth()
            if not batch:
                continue
            started = self._clock()
            info = BatchInfo(queue_waits=[started - e.enqueued_at for e in batch])
            try:
                results = await self._process([e.item for e in batch], info)
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
            except asyncio.CancelledError:
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(RuntimeError("service is shutting down"))
                raise
            except Exception as exc:
                log.exception("batch of %d items failed", len(batch))
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(exc)
                continue
            for e, result in zip(batch, results, strict=True):
                if e.future.done():
                    continue
                # A processor may fail single items (e.g. one model version's share of a batch).
                if isinstance(result, BaseException):
                    e.future.set_exception(result)
                else:
                    e.future.set_result(result)
