"""loadtests/run.py against real HTTP servers on loopback: the fake-engine gateway (zero errors,
nonzero throughput), a server that answers 500 (the run fails), and one that sheds load with 429
(tolerated). Each run is bounded to a few seconds."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.app import create_app
from service.settings import Settings
from tests.deploy.tooling import REPO, tools_python
from tests.fakes import loader_for

RUNNER = REPO / "loadtests" / "run.py"
RUN_TIME_S = 3.0


class LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1, on a free port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/ready", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready: {last}")


def run_load(url: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    python = tools_python("locust")
    cmd = [
        str(python),
        str(RUNNER),
        "--host",
        url,
        "--run-time",
        str(RUN_TIME_S),
        "--json",
        str(out),
        "--seed",
        "0",
        "--timeout",
        "20",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


@pytest.fixture()
def gateway(checkpoint_root: Path) -> Iterator[LoopbackServer]:
    """The real gateway (batcher, cache, limits, metrics) over the fake engines."""

    settings = Settings(
        checkpoint_root=checkpoint_root,
        warmup=False,
        max_model_len=512,
        batch_max_wait_ms=5,
    )  # type: ignore[call-arg]
    with LoopbackServer(create_app(settings, loader_for(checkpoint_root))) as server:
        wait_ready(server.url)
        yield server


def test_rollout_load_on_the_gateway_has_no_errors(gateway: LoopbackServer, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc, report = run_load(
        gateway.url,
        out,
        *("--single-users", "16", "--batch-users", "1", "--batch-min", "64", "--batch-max", "96"),
        *("--num-critiques", "2"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["errors"] == 0, report["error_samples"]
    assert report["ok"] > 0 and report["throughput"]["requests_per_s"] > 0
    assert report["throughput"]["items_per_s"] > report["throughput"]["ok_requests_per_s"]
    single, batch = report["by_name"]["/score [1 item]"], report["by_name"]["/score [batch]"]
    assert single["ok"] > 0 and batch["ok"] > 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    for word in ("p50", "p95", "p99", "items/s", "status codes"):
        assert word in proc.stdout
    # The gateway saw the traffic the runner reports.
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'critic_rm_requests_total{route="/score",status="200"}' in metrics


def _fixed_app(status_for: Any) -> FastAPI:
    app = FastAPI()
    calls = {"n": 0}

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        calls["n"] += 1
        status = status_for(calls["n"])
        if status != 200:
            return JSONResponse({"error": {"code": "x", "message": "x"}}, status_code=status)
        results = [{"reward": 0.0, "critique_rewards": [], "reward_std": 0.0}] * len(body["items"])
        return JSONResponse({"model_version": "v", "results": results})

    return app


def test_server_errors_fail_the_run(tmp_path: Path) -> None:
    with LoopbackServer(_fixed_app(lambda n: 500 if n % 3 == 0 else 200)) as server:
        proc, report = run_load(
            server.url, tmp_path / "load.json", "--single-users", "4", "--batch-users", "0"
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert report["errors"] > 0 and report["ok"] > 0
    assert report["status_counts"].get("500", 0) == report["errors"]
    assert "FAILED" in proc.stdout


def test_throttling_with_429_is_not_an_error(tmp_path: Path) -> None:
    with LoopbackServer(_fixed_app(lambda n: 429 if n % 2 == 0 else 200)) as server:
        proc, report = run_load(
            server.url, tmp_path / "load.json", "--single-users", "4", "--batch-users", "0"
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["throttled"] > 0 and report["ok"] > 0 and report["errors"] == 0


def test_unreachable_service_fails_the_run(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, report = run_load(
        f"http://127.0.0.1:{port}",
        tmp_path / "load.json",
        *("--single-users", "2", "--batch-users", "0", "--run-time", "1"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert report["ok"] == 0 and report["errors"] > 0
