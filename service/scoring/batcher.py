"""Micro-batcher: groups items of concurrent requests into engine batches.

Waits for a first item, then fills the batch up to an item cap and a token budget, or until the
first item has waited `max_wait_s`. Results go back by position. A failing batch fails every
future of that batch and the loop keeps running.

An item whose caller went away (its future cancelled) leaves the queue at once, so `depth` (and
the queue-depth gauge an autoscaler reads) counts only items someone still waits for; a running
batch whose callers have all gone is cancelled, which aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.model.errors import ShuttingDown

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Entry(Generic[T, R]):
    item: T
    cost: int
    future: asyncio.Future[R]
    enqueued_at: float
    seq: int


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
        on_abandoned: Callable[[int], None] | None = None,
    ) -> None:
        self._process = process
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self._cost = cost
        self._clock = clock
        self._on_depth = on_depth
        self._on_abandoned = on_abandoned
        self._waiting: OrderedDict[int, _Entry[T, R]] = OrderedDict()
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gathering: list[_Entry[T, R]] = []
        self._batch: list[_Entry[T, R]] = []
        self._batch_task: asyncio.Future[Sequence[R | BaseException]] | None = None
        self._abandoned = False

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not those running), whose callers still wait."""
        return len(self._waiting)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.fail_all(ShuttingDown("service is shutting down"))

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiting, gathering and running item with `exc` (e.g. when a drain times
        out, so the callers get a clean error instead of a dropped connection)."""
        for entry in [*self._waiting.values(), *self._gathering, *self._batch]:
            if not entry.future.done():
                entry.future.set_exception(exc)
                entry.future.exception()  # seen here: its caller may be gone already
        self._waiting.clear()
        self._report_depth()

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Queue one item now (no await, so admission checks and queueing are atomic) and
        return its future. Cancelling the future drops the item."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = _Entry(item, self._cost(item), future, self._clock(), next(self._seq))
        self._waiting[entry.seq] = entry
        future.add_done_callback(lambda _f: self._on_done(entry.seq))
        self._wakeup.set()
        self._report_depth()
        return future

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result. Cancelling the caller drops the item."""
        return await self.enqueue(item)

    def _on_done(self, seq: int) -> None:
        if self._waiting.pop(seq, None) is not None:
            self._report_depth()  # left the queue before a batch took it
            return
        task = self._batch_task
        if task is not None and not task.done() and all(e.future.done() for e in self._batch):
            self._abandoned = True
            task.cancel()  # every caller of the running batch has gone

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth)

    async def _wait_for_item(self, deadline: float | None) -> bool:
        """Wait until an item is queued; False if `deadline` (clock time) passed first."""
        while not self._waiting:
            self._wakeup.clear()
            if deadline is None:
                await self._wakeup.wait()
                continue
            timeout = deadline - self._clock()
            if timeout <= 0:
                return False
            # A wake-up whose item was withdrawn loops with the time that is left.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        return True

    async def _collect(self) -> list[_Entry[T, R]]:
        """Take the next batch from the queue. Entries being gathered stay visible to
        fail_all (and are failed if the loop is cancelled meanwhile)."""
        batch = self._gathering = []
        tokens = 0
        deadline: float | None = None
        while len(batch) < self.max_items:
            if not await self._wait_for_item(deadline):
                break
            entry = next(iter(self._waiting.values()))
            if batch and tokens + entry.cost > self.max_tokens:
                break  # it stays first in line for the next batch
            del self._waiting[entry.seq]
            batch.append(entry)
            tokens += entry.cost
            if deadline is None:
                deadline = entry.enqueued_at + self.max_wait_s
        self._gathering = []
        self._report_depth()
        # A caller may have left while the batch was gathered.
        return [e for e in batch if not e.future.done()]

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Entry[T, R]]) -> None:
        started = self._clock()
        info = BatchInfo(queue_waits=[started - e.enqueued_at for e in batch])
        task = asyncio.ensure_future(self._process([e.item for e in batch], info))
        self._batch, self._batch_task, self._abandoned = batch, task, False
        try:
            # asyncio.wait, not await: the batch task may be cancelled on its own (abandoned)
            # without that cancelling this loop.
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(ShuttingDown("service is shutting down"))
            raise
        finally:
            self._batch, self._batch_task = [], None
        if task.cancelled():
            if self._abandoned:
                log.info("dropped a running batch of %d items: every caller has gone", len(batch))
                if self._on_abandoned is not None:
                    self._on_abandoned(len(batch))
            for e in batch:  # failed by fail_all, or cancelled from elsewhere
                if not e.future.done():
                    e.future.set_exception(ShuttingDown("the batch was cancelled"))
            return
        try:
            results = task.result()
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
        except Exception as exc:
            log.exception("batch of %d items failed", len(batch))
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
            return
        for e, result in zip(batch, results, strict=True):
            if e.future.done():
                continue
            # A processor may fail single items (e.g. one model version's share of a batch).
            if isinstance(result, BaseException):
                e.future.set_exception(result)
            else:
                e.future.set_result(result)
