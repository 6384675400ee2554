"""Hot reload under load and the SIGTERM drain on the real engines. Runs after the other
integration tests (file order): it changes the served version and finally stops the server."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from tests.integration.conftest import LiveServer, publish_variant

pytestmark = pytest.mark.engine
REPORT = Path(__file__).resolve().parents[2] / "bench-results"


def test_reload_under_load_fails_nothing_and_mixes_no_versions(
    live_server: LiveServer,
    http: httpx.Client,
    serving_root: CheckpointRoot,
    served_version: CheckpointVersion,
) -> None:
    v1 = served_version.manifest.model_version
    v2 = publish_variant(serving_root, served_version, seed=1)
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


def test_sigterm_finishes_in_flight_requests_then_exits_zero(live_server: LiveServer) -> None:
    body = {
        "items": [{"prompt": "Explain rain.", "response": "Water falls."}],
        "num_critiques": 2,
        "max_critique_tokens": 48,
        "use_cache": False,
    }
    with ThreadPoolExecutor(3) as pool:
        inflight = [
            pool.submit(httpx.post, f"{live_server.url}/score", json=body, timeout=300)
            for _ in range(3)
        ]
        time.sleep(1.0)
        live_server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = httpx.get(f"{live_server.url}/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = httpx.post(f"{live_server.url}/score", json=body, timeout=10)
        assert refused.status_code == 503
        assert [f.result().status_code for f in inflight] == [200, 200, 200]
    assert live_server.process.wait(timeout=120) == 0, live_server.log_tail()
