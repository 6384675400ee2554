"""Hot reload under load and SIGTERM on the real engines: while they load, and while a reload
loads with requests in flight; no engine process outlives the gateway. The reload test leaves
the shared server on another version and the SIGTERM test stops it; a later test that needs the
default gets a fresh one (conftest.SharedServer), so these tests run in any order, and they run
last (conftest.RUN_LAST) so that none has to."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from tests.integration.conftest import LiveServer, SharedServer, publish_variant, start_server

pytestmark = pytest.mark.engine
REPORT = Path(__file__).resolve().parents[2] / "bench-results"


def engine_processes(server: LiveServer, seen: set[psutil.Process]) -> int:
    """How many descendants the gateway has now; each is remembered in `seen`."""
    try:
        found = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.Error:
        return 0
    seen.update(found)
    return len(found)


def engine_cores(server: LiveServer) -> set[int]:
    """The gateway's direct children: the engine cores of each loaded version (and the
    multiprocessing helpers that live as long as the gateway)."""
    try:
        return {p.pid for p in psutil.Process(server.process.pid).children()}
    except psutil.Error:
        return set()


def survivors(seen: set[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in seen:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    for proc in alive:
        proc.kill()
    return alive


def wait_until(check: object, timeout: float, server: LiveServer) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert server.process.poll() is None, server.log_tail()
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)


def test_sigterm_while_the_engines_load_leaves_no_engine_process(
    serving_root: CheckpointRoot, tmp_path: Path
) -> None:
    server = start_server(serving_root.root, tmp_path / "loading.log", CRM_RELOAD_POLL_S="0")
    seen: set[psutil.Process] = set()
    try:
        # Both engine cores spawned and busy starting (loading weights, compiling).
        wait_until(lambda: engine_processes(server, seen) >= 2, 120, server)
        time.sleep(3)
        status = httpx.get(f"{server.url}/ready", timeout=10).json()["status"]
        assert status in ("loading", "warming"), status
        engine_processes(server, seen)
        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    alive = survivors(seen)
    assert not alive, f"engine processes outlived the gateway: {alive}\n{server.log_tail()}"
    assert code == 0, server.log_tail()
    REPORT.mkdir(exist_ok=True)
    (REPORT / "sigterm-loading.json").write_text(
        json.dumps({"state": status, "exit_s": took, "engine_processes": len(seen)}, indent=2)
    )


def test_reload_under_load_fails_nothing_and_mixes_no_versions(
    live_server: LiveServer,
    http: httpx.Client,
    shared_server: SharedServer,
    serving_root: CheckpointRoot,
    served_version: CheckpointVersion,
) -> None:
    v1 = http.get("/info").json()["model_version"]
    assert v1 == served_version.manifest.model_version, "another test left a version pinned"
    v2 = publish_variant(serving_root, served_version, seed=1)
    # Left on v2 (a reload back would cost two engine starts): the next test that needs the
    # default gets a fresh gateway.
    shared_server.on_default = False
    reload_under_load(live_server, http, v1, v2)


def reload_under_load(live_server: LiveServer, http: httpx.Client, v1: str, v2: str) -> None:
    stop = threading.Event()
    results: list[tuple[float, float, int, str | None]] = []

    def client(i: int) -> None:
        with live_server.client() as c:
            n = 0
            while not stop.is_set():
                body = {
                    "items": [{"prompt": f"Say {i}-{n}.", "response": "ok"}],
                    "num_critiques": 1,
                    "max_critique_tokens": 4,
                    "use_cache": False,
                }
                t0 = time.monotonic()
                r = c.post("/score", json=body)
                version = r.json().get("model_version") if r.status_code == 200 else None
                results.append((t0, time.monotonic(), r.status_code, version))
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    t_reload = time.monotonic()
    r = http.post("/admin/reload", json={"version": v2}, timeout=900)
    t_swapped = time.monotonic()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == v2 and r.json()["previous"] == v1
    failed = [x for x in results if x[2] != 200]
    assert not failed, failed[:5]
    assert {x[3] for x in results} == {v1, v2}
    assert all(x[3] == v2 for x in results if x[0] > t_swapped), (
        "a request started after the swap got the old version"
    )
    during = [x[1] - x[0] for x in results if x[1] > t_reload and x[0] < t_swapped + 1]
    REPORT.mkdir(exist_ok=True)
    (REPORT / "reload-under-load.json").write_text(
        json.dumps(
            {
                "requests": len(results),
                "failed": len(failed),
                "reload_seconds": t_swapped - t_reload,
                "max_latency_during_swap_s": max(during, default=0.0),
                "by_version": {v: sum(1 for x in results if x[3] == v) for v in (v1, v2)},
            },
            indent=2,
        )
    )
    info = http.get("/info").json()
    assert info["model_version"] == v2 and info["reload"]["last"]["result"] == "ok"


def test_sigterm_during_a_reload_finishes_in_flight_requests_then_exits_zero(
    live_server_any_version: LiveServer,
    serving_root: CheckpointRoot,
    served_version: CheckpointVersion,
) -> None:
    live_server = live_server_any_version
    body = {
        "items": [{"prompt": "Explain rain.", "response": "Water falls."}],
        "num_critiques": 2,
        "max_critique_tokens": 48,
        "use_cache": False,
    }
    v3 = publish_variant(serving_root, served_version, seed=3)
    seen: set[psutil.Process] = set()
    engine_processes(live_server, seen)
    serving = engine_cores(live_server)
    with ThreadPoolExecutor(4) as pool:
        reload = pool.submit(
            httpx.post, f"{live_server.url}/admin/reload", json={"version": v3}, timeout=300
        )
        # The new version's engine processes are starting beside the served ones.
        # A new child of the gateway itself: the engine cores' descendants (torch's compile
        # workers) come and go on their own, so a count of all of them can fall while cores start.
        wait_until(
            lambda: (
                engine_processes(live_server, seen) > 0
                and bool(engine_cores(live_server) - serving)
            ),
            240,
            live_server,
        )
        inflight = [
            pool.submit(httpx.post, f"{live_server.url}/score", json=body, timeout=300)
            for _ in range(3)
        ]
        time.sleep(1.0)
        t0 = time.monotonic()
        live_server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = httpx.get(f"{live_server.url}/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = httpx.post(f"{live_server.url}/score", json=body, timeout=10)
        assert refused.status_code == 503
        r = reload.result()
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
        assert [f.result().status_code for f in inflight] == [200, 200, 200]
    assert live_server.process.wait(timeout=120) == 0, live_server.log_tail()
    took = time.monotonic() - t0
    alive = survivors(seen)
    assert not alive, f"engine processes outlived the gateway: {alive}"
    (REPORT / "sigterm-reloading.json").write_text(
        json.dumps({"exit_s": took, "engine_processes": len(seen)}, indent=2)
    )
