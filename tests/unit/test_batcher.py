from __future__ import annotations

import asyncio

import pytest

from service.model.errors import ShuttingDown
from service.scoring.batcher import BatchInfo, MicroBatcher


class Recorder:
    def __init__(self, fail_on: set[int] | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on or set()
        self.delay_s = delay_s

    async def __call__(self, items: list[int], info: BatchInfo) -> list[int]:
        self.batches.append(list(items))
        assert len(info.queue_waits) == len(items)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_on & set(items):
            raise ValueError("boom")
        return [i * 10 for i in items]


async def test_concurrent_items_are_grouped_and_answered_by_position() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=16, max_tokens=10**9, max_wait_s=0.05)
    b.start()
    try:
        results = await asyncio.gather(*(b.submit(i) for i in range(40)))
    finally:
        await b.stop()
    assert results == [i * 10 for i in range(40)]
    assert [len(x) for x in rec.batches] == [16, 16, 8]


async def test_token_budget_splits_batches_and_keeps_order() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(
        rec, max_items=100, max_tokens=25, max_wait_s=0.05, cost=lambda _i: 10
    )
    b.start()
    try:
        await asyncio.gather(*(b.submit(i) for i in range(5)))
    finally:
        await b.stop()
    assert rec.batches == [[0, 1], [2, 3], [4]]


async def test_an_item_over_budget_alone_still_runs() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(
        rec, max_items=8, max_tokens=5, max_wait_s=0.01, cost=lambda _i: 50
    )
    b.start()
    try:
        assert await b.submit(3) == 30
    finally:
        await b.stop()


async def test_max_wait_bounds_the_latency_of_a_lonely_item() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=64, max_tokens=10**9, max_wait_s=0.02)
    b.start()
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await asyncio.wait_for(b.submit(1), timeout=2) == 10
        assert loop.time() - t0 < 1.0
    finally:
        await b.stop()
    assert rec.batches == [[1]]


async def test_failure_fails_only_its_batch_and_loop_survives() -> None:
    rec = Recorder(fail_on={2})
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=3, max_tokens=10**9, max_wait_s=0.05)
    b.start()
    try:
        first = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in first)
        assert await b.submit(7) == 70
    finally:
        await b.stop()


async def test_cancelled_callers_are_dropped_before_their_batch() -> None:
    rec = Recorder(delay_s=0.1)
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=1, max_tokens=10**9, max_wait_s=0.0)
    b.start()
    try:
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.02)  # batch [1] is running
        doomed = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await first == 10
        assert await b.submit(3) == 30
    finally:
        await b.stop()
    assert [2] not in rec.batches


async def test_stop_fails_waiting_items() -> None:
    rec = Recorder(delay_s=0.2)
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=1, max_tokens=10**9, max_wait_s=0.0)
    b.start()
    running = asyncio.ensure_future(b.submit(1))
    queued = asyncio.ensure_future(b.submit(2))
    await asyncio.sleep(0.05)
    await b.stop()
    for fut in (running, queued):
        with pytest.raises(ShuttingDown, match="shutting down"):
            await fut


async def test_an_item_whose_caller_left_while_its_batch_gathered_is_not_run() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=8, max_tokens=10**9, max_wait_s=0.2)
    b.start()
    try:
        leaver = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)  # taken into the batch being gathered, not yet run
        leaver.cancel()
        await asyncio.sleep(0.3)
        assert rec.batches == [], "a batch ran for a caller that had gone"
        assert await b.submit(2) == 20
    finally:
        await b.stop()


async def test_stop_and_fail_all_reach_items_being_gathered() -> None:
    rec = Recorder()
    b: MicroBatcher[int, int] = MicroBatcher(rec, max_items=8, max_tokens=10**9, max_wait_s=5.0)
    b.start()
    gathering = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0.05)
    b.fail_all(ShuttingDown("drain timed out"))
    with pytest.raises(ShuttingDown, match="drain"):
        await gathering
    gathering = asyncio.ensure_future(b.submit(2))
    await asyncio.sleep(0.05)
    await b.stop()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(gathering, 1.0)
