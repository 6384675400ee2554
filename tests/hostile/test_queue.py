"""The queue under storms of deadlines, disconnects and floods (fake engines): the depth gauge
an autoscaler reads falls back to 0, a batch nobody waits for stops, the limit holds, and a 429
comes back at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from tests.fakes import FakeGenerator, loader_for, running


def make_app(root: Path, **kw: Any) -> FastAPI:
    settings = Settings(checkpoint_root=root, warmup=False, max_model_len=512, **kw)
    return create_app(settings, loader_for(root))


def body(tag: str, n: int = 1) -> dict[str, Any]:
    items = [{"prompt": f"{tag} {i}", "response": "a"} for i in range(n)]
    return {"items": items, "num_critiques": 1, "use_cache": False}


def generator(app: FastAPI) -> FakeGenerator:
    gen: FakeGenerator = app.state.service.runtime.generator
    return gen


def gauge(app: FastAPI) -> float:
    return float(app.state.metrics.queue_depth._value.get())


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_deadline_and_disconnect_storms_leave_no_phantom_depth(checkpoint_root: Path) -> None:
    app = make_app(checkpoint_root, batch_max_items=2)
    async with running(app) as c:
        generator(app).delay_s = 0.3
        deadline_storm = [
            c.post("/score", json=body(f"d{i}", 4), headers={"X-Request-Timeout": "0.1"})
            for i in range(40)
        ]
        statuses = [r.status_code for r in await asyncio.gather(*deadline_storm)]
        assert set(statuses) <= {200, 504} and 504 in statuses
        # Disconnects: the client task is cancelled mid-wait (the ASGI app sees its request
        # task cancelled, as when uvicorn notices a closed connection).
        leavers = [
            asyncio.ensure_future(c.post("/score", json=body(f"x{i}", 4))) for i in range(40)
        ]
        await asyncio.sleep(0.2)
        for task in leavers:
            task.cancel()
        await asyncio.gather(*leavers, return_exceptions=True)
        service = app.state.service
        await until(lambda: service.batcher.depth == 0 and gauge(app) == 0, timeout=2.0)
        generator(app).delay_s = 0.0
        r = await c.post("/score", json=body("after"))
        assert r.status_code == 200 and gauge(app) == 0


async def test_a_batch_whose_callers_all_left_is_stopped(checkpoint_root: Path) -> None:
    app = make_app(checkpoint_root)
    async with running(app) as c:
        generator(app).delay_s = 30.0
        r = await c.post("/score", json=body("slow", 3), headers={"X-Request-Timeout": "0.3"})
        assert r.status_code == 504
        abandoned = app.state.metrics.abandoned_items
        await until(lambda: abandoned._value.get() == 3, timeout=2.0)
        generator(app).delay_s = 0.0
        t0 = time.monotonic()
        assert (await c.post("/score", json=body("next"))).status_code == 200
        assert time.monotonic() - t0 < 2.0, "the abandoned batch still held the engines"


async def test_the_queue_limit_holds_and_429s_are_immediate(checkpoint_root: Path) -> None:
    limit = 64
    app = make_app(checkpoint_root, max_queue_items=limit, batch_max_items=8)
    async with running(app) as c:
        service = app.state.service
        depths: list[int] = []
        report = service.batcher._on_depth
        service.batcher._on_depth = lambda d: (depths.append(d), report(d))
        generator(app).delay_s = 0.2

        async def timed(i: int) -> tuple[int, float]:
            t0 = time.monotonic()
            r = await c.post("/score", json=body(f"f{i}", 8))
            return r.status_code, time.monotonic() - t0

        results = await asyncio.gather(*(timed(i) for i in range(40)))
    assert max(depths) <= limit, max(depths)
    refused = [t for s, t in results if s == 429]
    assert {s for s, _ in results} <= {200, 429} and refused
    assert max(refused) < 1.0, f"a 429 took {max(refused):.2f}s"


async def test_a_429_costs_no_tokenizing(checkpoint_root: Path) -> None:
    app = make_app(checkpoint_root, max_queue_items=4)
    async with running(app) as c:
        generator(app).delay_s = 5.0
        first = asyncio.ensure_future(c.post("/score", json=body("hold", 1)))
        await until(lambda: bool(generator(app).calls))
        filler = asyncio.ensure_future(c.post("/score", json=body("fill", 4)))
        await until(lambda: app.state.service.batcher.depth == 4)
        formatter = app.state.service.runtime.formatter
        encoded: list[object] = []
        encode = formatter.encode_item
        formatter.encode_item = lambda *a, **k: (encoded.append(a), encode(*a, **k))[1]
        t0 = time.monotonic()
        r = await c.post("/score", json=body("refused", 8))
        assert r.status_code == 429 and time.monotonic() - t0 < 0.5
        assert int(r.headers["retry-after"]) >= 1
        assert encoded == [], "a refused request was tokenised"
        for task in (first, filler):
            task.cancel()
        await asyncio.gather(first, filler, return_exceptions=True)
