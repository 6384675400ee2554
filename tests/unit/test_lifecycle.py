"""Graceful drain on SIGTERM and engine faults, on fake engines behind a real uvicorn socket."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.server import DrainingServer
from service.settings import Settings
from tests.fakes import loader_for

ITEM = {"items": [{"prompt": "q", "response": "a"}], "num_critiques": 1, "use_cache": False}


@contextlib.contextmanager
def serve(root: Path, **kw: Any) -> Iterator[tuple[str, FastAPI, DrainingServer, threading.Thread]]:
    settings = Settings(checkpoint_root=root, warmup=False, max_model_len=512, **kw)
    app = create_app(settings, loader_for(root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"), app
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready").status_code == 200:
                break
        assert time.monotonic() < deadline, "fake server did not get ready"
        time.sleep(0.05)
    try:
        yield url, app, server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_sigterm_drains_in_flight_requests_then_exits(checkpoint_root: Path) -> None:
    with serve(checkpoint_root, drain_timeout_s=10, batch_max_items=1) as (
        url,
        app,
        server,
        thread,
    ):
        app.state.service.runtime.generator.delay_s = 1.0
        with ThreadPoolExecutor(3) as pool:
            inflight = [
                pool.submit(httpx.post, f"{url}/score", json=ITEM, timeout=30) for _ in range(3)
            ]
            # Signal only once all three are inside the service: a fixed sleep raced
            # a loaded CI machine, where two had not reached the socket yet.
            service = app.state.service
            deadline = time.monotonic() + 10
            while service.inflight < 3:
                assert time.monotonic() < deadline, f"only {service.inflight} requests arrived"
                time.sleep(0.01)
            server.handle_exit(signal.SIGTERM, None)  # what the signal handler does
            time.sleep(0.1)
            ready = httpx.get(f"{url}/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            refused = httpx.post(f"{url}/score", json=ITEM)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
            assert [f.result().status_code for f in inflight] == [200, 200, 200]
        thread.join(timeout=10)
        assert not thread.is_alive(), "server did not exit after the drain"


def test_dead_engine_fails_readiness_and_asks_to_exit(checkpoint_root: Path) -> None:
    with serve(checkpoint_root, health_interval_s=0.05) as (_url, app, _server, thread):
        app.state.service.runtime.generator.dead = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the process should exit for the orchestrator"
        assert app.state.model.health.state == "failed"
        assert "health check" in (app.state.model.health.error or "")


def test_after_an_engine_error_health_runs_a_real_forward(checkpoint_root: Path) -> None:
    with serve(checkpoint_root, health_interval_s=0) as (url, app, _server, thread):
        gen = app.state.service.runtime.generator
        gen.fail_next = 1
        assert httpx.post(f"{url}/score", json=ITEM).status_code == 503
        assert app.state.model.health.suspect
        calls = len(gen.calls)
        assert httpx.get(f"{url}/health").status_code == 200
        assert len(gen.calls) == calls + 1, "/health did not run a forward"
        assert not app.state.model.health.suspect
        gen.fail_next = 1
        assert httpx.post(f"{url}/score", json=ITEM).status_code == 503
        gen.dead = True
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "dead"
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_second_signal_skips_the_drain(checkpoint_root: Path) -> None:
    with serve(checkpoint_root, drain_timeout_s=30, batch_max_items=1) as (
        url,
        app,
        server,
        thread,
    ):
        app.state.service.runtime.generator.delay_s = 2.0
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.post, f"{url}/score", json=ITEM, timeout=30)
            time.sleep(0.2)
            t0 = time.monotonic()
            server.handle_exit(signal.SIGTERM, None)
            server.handle_exit(signal.SIGINT, None)
            thread.join(timeout=10)
            assert time.monotonic() - t0 < 5
            with contextlib.suppress(Exception):
                slow.result()
