"""A real Prometheus (Debian's package) scrapes the real gateway while traffic of every kind the
dashboard shows is sent; then every panel query of the dashboard is evaluated through
Prometheus' HTTP API: none errors, and every query that this traffic should feed returns series.
The same Prometheus loads the alert rules (k8s/critic-rm/alerts/critic-rm.rules.yaml)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.test_alerts import RULES, rules
from tests.deploy.test_dashboard import GRAFANA_INTERVALS, all_panels, dashboard
from tests.deploy.tooling import require_tool
from tests.integration.conftest import LiveServer, free_port

pytestmark = pytest.mark.engine

SCRAPE_S = 1
# $__rate_interval for a 1 s scrape: Grafana's own rule gives max(4 x scrape, step + scrape).
RATE_WINDOW = "20s"
# Panel queries this traffic may leave empty, and why (every other one must return series).
MAY_BE_EMPTY = {
    ("5xx ratio", "A"): "sum() over no 5xx series is empty; the readiness polls answered 503 "
    "while the engines loaded give it data, if this gateway was started by the test session",
}
SMALL = {"num_critiques": 1, "max_critique_tokens": 8}
ITEM = {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5."}


@pytest.fixture
def prometheus(live_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    binary = require_tool("prometheus")
    work = tmp_path
    target = live_server.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "critic-rm", "static_configs": [{"targets": [target]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def send_traffic(server: LiveServer) -> None:
    """One request of each kind the dashboard shows: rewards at m = 0 (a cache miss, then a
    hit) and with a critique, critiques, a refinement, a comparison, and a refused request."""
    with server.client(timeout=300) as http:
        for _ in range(2):
            assert (
                http.post("/score", json={"items": [ITEM], "num_critiques": 0}).status_code == 200
            )
        r = http.post("/score", json={"items": [ITEM], **SMALL, "use_cache": False})
        assert r.status_code == 200, r.text
        r = http.post("/critique", json={**ITEM, "n": 1, "max_critique_tokens": 8})
        assert r.status_code == 200, r.text
        refine = {**ITEM, **SMALL, "rounds": 1, "candidates": 1, "stop": "never"}
        r = http.post("/refine", json={**refine, "max_revision_tokens": 8})
        assert r.status_code == 200, r.text
        compare = {
            "prompt": ITEM["prompt"],
            "responses": ["5", "6"],
            "num_criteria": 1,
            "max_rubric_tokens": 8,
        }
        r = http.post("/compare", json=compare)
        assert r.status_code == 200, r.text
        assert http.post("/score", json={"items": []}).status_code == 422


def test_every_panel_query_evaluates_on_a_real_prometheus(
    live_server: LiveServer, prometheus: str
) -> None:
    wait_for(lambda: query(prometheus, 'up{job="critic-rm"} == 1'), 30, "the gateway scraped")
    send_traffic(live_server)
    # The last request's counters in at least two scrapes, so that rate() sees them.
    time.sleep(4 * SCRAPE_S)

    empty, evaluated = [], 0
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$job", "critic-rm").replace("$instance", ".*")
            result = query(prometheus, GRAFANA_INTERVALS.sub(RATE_WINDOW, expr))
            evaluated += 1
            if not result:
                empty.append((panel["title"], target["refId"]))
    assert evaluated > 40
    unexpected = sorted(set(empty) - set(MAY_BE_EMPTY))
    assert not unexpected, f"panels with no data after traffic that should feed them: {unexpected}"

    # The alert rules loaded and evaluate without error on the same Prometheus; none fires.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in rules()}
    assert all(r["health"] == "ok" for r in loaded.values()), loaded
    assert not [r["name"] for r in loaded.values() if r["state"] == "firing"]
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    (active,) = targets["activeTargets"]
    assert active["health"] == "up" and not active["lastError"], active
