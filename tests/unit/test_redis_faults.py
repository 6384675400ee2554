"""The Redis result cache failing under a running gateway (fake engines): Redis killed mid-run,
then restarted; Redis stalled (DEBUG SLEEP / CLIENT PAUSE). The cache is fail-open: scoring goes
on, promptly, and the failures are counted in critic_rm_cache_errors_total{op}.

Each test runs its own redis-server (Debian's binary, on PATH) on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from tests.fakes import loader_for, running

REDIS_TIMEOUT_S = 0.2
# A request makes at most one cache read and one cache write; a stalled Redis costs each about
# one redis-py socket timeout (measured: ~0.43 s a request at 0.2 s). Allow two timeouts per
# operation (a fresh connection's connect, then its read), plus slack below.
CACHE_BOUND_S = 2 * 2 * REDIS_TIMEOUT_S
FAST_S = 3.0  # "still quick" with Redis gone
SLOW_REDIS_S = 3.0  # how long the stalled Redis hangs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
        s.settimeout(0.5)
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")
    return False


class RedisServer:
    """A private redis-server subprocess; restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not on PATH (Debian: apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--enable-debug-command",
                "local",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str, timeout: float = 10) -> str:
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return out.stdout.strip()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def make_app(checkpoint_root: Path, redis: RedisServer) -> FastAPI:
    settings = Settings(
        checkpoint_root=checkpoint_root,
        warmup=False,
        max_model_len=512,
        redis_url=redis.url,
        redis_timeout_s=REDIS_TIMEOUT_S,
    )
    return create_app(settings, loader_for(checkpoint_root))


def item(i: int | str) -> dict[str, object]:
    return {"items": [{"prompt": f"What is {i} + {i}?", "response": "Four."}], "num_critiques": 2}


async def score(c: httpx.AsyncClient, i: int | str) -> tuple[bool, float]:
    """(cached, seconds) of a /score call for item `i`, which must succeed."""
    t0 = time.perf_counter()
    r = await c.post("/score", json=item(i))
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return bool(r.json()["results"][0]["cached"]), elapsed


async def cache_errors(c: httpx.AsyncClient) -> dict[str, float]:
    text = (await c.get("/metrics")).text
    found = {
        op: float(v)
        for op, v in re.findall(r'^critic_rm_cache_errors_total\{op="(\w+)"\} (\S+)$', text, re.M)
    }
    return {op: found.get(op, 0.0) for op in ("get", "set")}


async def test_redis_killed_mid_run_fails_open_and_recovers_after_restart(
    checkpoint_root: Path, redis_server: RedisServer
) -> None:
    app = make_app(checkpoint_root, redis_server)
    async with running(app, timeout=30) as c:
        assert (await c.get("/info")).json()["cache"]["backend"] == "redis"
        assert (await score(c, 1))[0] is False
        assert (await score(c, 1))[0] is True, "a repeat is a cache hit"
        assert int(redis_server.cli("DBSIZE")) == 1, "the result was stored in Redis"
        assert await cache_errors(c) == {"get": 0, "set": 0}

        redis_server.kill()

        for i in (2, 3, 1):  # new items, and one that was cached in the dead Redis
            cached, elapsed = await score(c, i)
            assert cached is False
            assert elapsed < FAST_S, f"/score took {elapsed:.2f}s with Redis down"
            r = await c.get("/ready")
            assert r.status_code == 200, r.text
        errors = await cache_errors(c)
        assert errors["get"] >= 3 and errors["set"] >= 3, errors
        assert (await c.get("/health")).status_code == 200

        redis_server.start()  # same port, empty

        assert (await score(c, 4))[0] is False
        assert (await score(c, 4))[0] is True, "caching did not resume after Redis came back"
        assert int(redis_server.cli("DBSIZE")) == 1
        assert await cache_errors(c) == errors, "errors after Redis came back"


@pytest.mark.parametrize(
    "stall",
    [
        ["DEBUG", "SLEEP", str(SLOW_REDIS_S)],
        ["CLIENT", "PAUSE", str(int(SLOW_REDIS_S * 1000)), "ALL"],
    ],
    ids=["debug-sleep", "client-pause"],
)
async def test_slow_redis_costs_at_most_the_cache_timeouts(
    checkpoint_root: Path, redis_server: RedisServer, stall: list[str]
) -> None:
    app = make_app(checkpoint_root, redis_server)
    async with running(app, timeout=30) as c:
        assert (await score(c, "warm"))[0] is False
        assert (await score(c, "warm"))[0] is True
        before = await cache_errors(c)

        stalled = threading.Thread(
            target=redis_server.cli, args=stall, kwargs={"timeout": 10}, daemon=True
        )
        t_stall = time.perf_counter()
        stalled.start()
        await asyncio.sleep(0.2)  # the stall has begun

        # One request alone, then several at once, all inside the stall.
        timings = [await score(c, "slow")]
        timings += await asyncio.gather(*(score(c, f"burst-{i}") for i in range(4)))
        assert time.perf_counter() - t_stall < SLOW_REDIS_S, "the stall ended too early to judge"
        for cached, elapsed in timings:
            assert cached is False
            assert elapsed < CACHE_BOUND_S + 0.7, (
                f"/score took {elapsed:.2f}s while Redis stalled; the cache timeouts allow "
                f"{CACHE_BOUND_S:.1f}s"
            )
        after = await cache_errors(c)
        assert after["get"] > before["get"] and after["set"] > before["set"], (before, after)
        r = await c.get("/ready")
        assert r.status_code == 200, r.text

        await asyncio.to_thread(stalled.join, 10)
        assert not stalled.is_alive()
        # CLIENT PAUSE returns at once (DEBUG SLEEP returns when it ends): wait the stall out.
        await asyncio.sleep(max(0.0, t_stall + SLOW_REDIS_S + 0.3 - time.perf_counter()))
        # Redis answers again: a new item is stored, and then served from the cache.
        assert (await score(c, "after"))[0] is False
        assert (await score(c, "after"))[0] is True, "caching did not resume after the stall"
