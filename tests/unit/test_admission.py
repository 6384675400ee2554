"""Admission control on fake engines: 429 under a flood, 504 past a deadline (queued work
dropped), client disconnects, API keys (401/403) and the body limit (413)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.fakes import FakeGenerator, loader_for, running, wait_ready


def settings(root: Path, **kw: Any) -> Settings:
    return Settings(checkpoint_root=root, warmup=False, max_model_len=512, **kw)


def generator(app: FastAPI) -> FakeGenerator:
    gen: FakeGenerator = app.state.service.runtime.generator
    return gen


def req(i: int, **kw: Any) -> dict[str, Any]:
    return {
        "items": [{"prompt": f"question {i}", "response": f"answer {i}"}],
        "num_critiques": 1,
        **kw,
    }


async def test_flood_gets_429_with_retry_after_and_nothing_else(checkpoint_root: Path) -> None:
    app = create_app(
        settings(checkpoint_root, max_queue_items=8, batch_max_items=4), loader_for(checkpoint_root)
    )
    async with running(app) as c:
        generator(app).delay_s = 0.2
        responses = await asyncio.gather(*(c.post("/score", json=req(i)) for i in range(40)))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 8
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"
    assert app.state.metrics.request_failures.labels("queue_full")._value.get() == len(refused)


async def test_deadline_gives_504_and_drops_the_queued_item(checkpoint_root: Path) -> None:
    app = create_app(
        settings(checkpoint_root, batch_max_items=1, batch_max_wait_ms=0),
        loader_for(checkpoint_root),
    )
    async with running(app) as c:
        gen = generator(app)
        gen.delay_s = 0.5
        slow = asyncio.ensure_future(c.post("/score", json=req(1)))
        await asyncio.sleep(0.1)  # item 1 occupies the engine
        late = await c.post("/score", json=req(2), headers={"X-Request-Timeout": "0.1"})
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert (await slow).status_code == 200
        await asyncio.sleep(0.2)
        assert gen.calls == [1], "the timed-out item still reached the engine"


async def test_an_item_shared_with_a_patient_request_survives_a_deadline(
    checkpoint_root: Path,
) -> None:
    app = create_app(settings(checkpoint_root), loader_for(checkpoint_root))
    async with running(app) as c:
        generator(app).delay_s = 0.3
        patient = asyncio.ensure_future(c.post("/score", json=req(7)))
        await asyncio.sleep(0.05)
        hasty = await c.post("/score", json=req(7), headers={"X-Request-Timeout": "0.05"})
        assert hasty.status_code == 504
        assert (await patient).status_code == 200


@pytest.mark.parametrize("value", ["0", "-1", "99999", "soon"])
async def test_bad_deadline_header_is_a_422(checkpoint_root: Path, value: str) -> None:
    app = create_app(settings(checkpoint_root), loader_for(checkpoint_root))
    async with running(app) as c:
        r = await c.post("/score", json=req(1), headers={"X-Request-Timeout": value})
    assert r.status_code == 422
    assert "X-Request-Timeout" in r.json()["error"]["field"]


@pytest.fixture()
def live_fake(checkpoint_root: Path) -> Iterator[tuple[str, FastAPI]]:
    """The gateway on fake engines behind a real uvicorn socket on loopback."""
    app = create_app(
        settings(checkpoint_root, batch_max_items=1, batch_max_wait_ms=0),
        loader_for(checkpoint_root),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready").status_code == 200:
                break
        time.sleep(0.05)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_client_disconnect_drops_its_queued_work(live_fake: tuple[str, FastAPI]) -> None:
    url, app = live_fake
    gen = app.state.service.runtime.generator
    gen.delay_s = 0.6
    with httpx.Client(base_url=url, timeout=10) as c:
        first = threading.Thread(target=lambda: c.post("/score", json=req(1)))
        first.start()
        wait_for(lambda: len(gen.calls) == 1)  # item 1 is running
        host, port = url.removeprefix("http://").split(":")
        body = httpx.Request("POST", f"{url}/score", json=req(2)).read()
        raw = socket.create_connection((host, int(port)))
        raw.sendall(
            b"POST /score HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: app.state.service.inflight == 2)  # item 2 is queued
        raw.close()  # gives up while item 2 waits behind item 1
        first.join()
        time.sleep(0.8)
    assert gen.calls == [1], "the abandoned item still reached the engine"
    assert app.state.metrics.request_failures.labels("client_disconnected")._value.get() == 1


@pytest.fixture()
def keyed(checkpoint_root: Path, tmp_path: Path) -> Iterator[TestClient]:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated keys\nfile-key\n")
    app = create_app(
        settings(checkpoint_root, api_keys=["env-key"], api_keys_file=keys_file),
        loader_for(checkpoint_root),
    )
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def test_scoring_routes_need_a_valid_key(keyed: TestClient) -> None:
    r = keyed.post("/score", json=req(1))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"
    r = keyed.post("/score", json=req(1), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = keyed.post(
        "/critique", json={"prompt": "q", "response": "a"}, headers={"Authorization": "Basic x"}
    )
    assert r.status_code == 401
    for key in ("env-key", "file-key"):
        r = keyed.post("/score", json=req(1), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text


def test_probes_and_metrics_stay_open(keyed: TestClient) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert keyed.get(path).status_code == 200, path


def test_oversized_bodies_are_a_413(checkpoint_root: Path) -> None:
    app = create_app(settings(checkpoint_root, max_body_bytes=2000), loader_for(checkpoint_root))
    with TestClient(app) as c:
        wait_ready(c)
        big = {"items": [{"prompt": "x" * 3000, "response": "y"}]}
        r = c.post("/score", json=big)
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"items": [{"prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'", "response": "y"}]}'

        r = c.post("/score", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/score", json=req(1)).status_code == 200
