"""SIGTERM in every lifecycle state (loading, warming, serving, reloading, draining past its
timeout) on a gateway process whose engine children ignore SIGTERM: the gateway exits promptly
with 0, answers what is in flight with JSON, and no engine process outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from service.checkpoint.bootstrap import bootstrap

REPO = Path(__file__).resolve().parents[2]
EXIT_BOUND_S = 20.0  # drain + the reaper's 5 s grace before SIGKILL, with room on 2 cores
SCORE = {"items": [{"prompt": "q", "response": "a"}], "num_critiques": 1, "use_cache": False}


@pytest.fixture(scope="module")
def versions(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("lifecycle") / "root"
    bootstrap(root, tiny_llama, seed=0)
    v2 = bootstrap(root, tiny_llama, seed=1, make_current=False).manifest.model_version
    return root, v2


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    seen: set[psutil.Process]

    def status(self) -> str:
        with contextlib.suppress(httpx.TransportError, ValueError):
            return str(httpx.get(f"{self.url}/ready", timeout=2).json()["status"])
        return "down"

    def engines(self) -> list[psutil.Process]:
        """The gateway's descendants now (remembered, to check they all died later)."""
        with contextlib.suppress(psutil.Error):
            found = psutil.Process(self.proc.pid).children(recursive=True)
            self.seen.update(found)
            return found
        return []

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def terminate_and_check(self) -> float:
        """SIGTERM; the seconds to exit. Asserts exit 0 and that no descendant survived."""
        self.engines()
        assert self.seen, "no engine process was ever started"
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"no exit {EXIT_BOUND_S}s after SIGTERM") from None
        took = time.monotonic() - t0
        alive = [p for p in self.seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in alive:
            p.kill()
        assert not alive, f"engine processes outlived the gateway: {alive}"
        assert code == 0, self.log.read_text()[-3000:]
        return took


@contextlib.contextmanager
def gateway(root: Path, tmp_path: Path, **env: str) -> Iterator[Gateway]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "gateway.log"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CRM_")},
        "CRM_CHECKPOINT_ROOT": str(root),
        "CRM_HOST": "127.0.0.1",
        "CRM_PORT": str(port),
        "CRM_MAX_MODEL_LEN": "512",
        "CRM_RELOAD_POLL_S": "0",
        "CRM_HEALTH_INTERVAL_S": "0",
        "CRM_DRAIN_TIMEOUT_S": "2",
        **env,
    }
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.gateway_proc"],
            cwd=REPO,
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(proc, f"http://127.0.0.1:{port}", log, set())
    try:
        gw.wait_for(lambda: gw.status() != "down")
        yield gw
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in gw.seen:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_sigterm_while_loading(versions: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = versions
    with gateway(root, tmp_path, FAKE_LOAD_S="120") as gw:
        gw.wait_for(lambda: gw.status() == "loading" and bool(gw.engines()))
        assert gw.terminate_and_check() < EXIT_BOUND_S


def test_sigterm_while_warming(versions: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = versions
    with gateway(root, tmp_path, FAKE_WARM_S="120") as gw:
        gw.wait_for(lambda: gw.status() == "warming")
        gw.terminate_and_check()


def test_sigterm_while_serving(versions: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = versions
    with gateway(root, tmp_path) as gw:
        gw.wait_for(lambda: gw.status() == "ready")
        assert httpx.post(f"{gw.url}/score", json=SCORE).status_code == 200
        gw.terminate_and_check()


def test_sigterm_while_reloading(versions: tuple[Path, str], tmp_path: Path) -> None:
    root, v2 = versions
    with gateway(root, tmp_path, FAKE_RELOAD_S="120") as gw, ThreadPoolExecutor(1) as pool:
        gw.wait_for(lambda: gw.status() == "ready")
        reload = pool.submit(httpx.post, f"{gw.url}/admin/reload", json={"version": v2}, timeout=60)
        gw.wait_for(lambda: len(gw.engines()) >= 2)  # the new version's engine is starting
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        r = reload.result()
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
        assert time.monotonic() - t0 < 5.0
        gw.proc.send_signal(signal.SIGTERM)  # a second signal only hurries the exit
        gw.terminate_and_check()


def test_sigterm_draining_past_its_timeout_answers_json(
    versions: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = versions
    with gateway(root, tmp_path, FAKE_GEN_S="60") as gw, ThreadPoolExecutor(2) as pool:
        gw.wait_for(lambda: gw.status() == "ready")
        inflight = [
            pool.submit(httpx.post, f"{gw.url}/score", json=SCORE, timeout=60) for _ in range(2)
        ]
        time.sleep(0.5)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        for future in inflight:
            r = future.result()
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "shutting_down"
            assert r.headers["retry-after"] == "1"
        assert time.monotonic() - t0 < 2 + 5
        gw.terminate_and_check()
