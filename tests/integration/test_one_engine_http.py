"""The one-engine layout on a real vLLM engine, over HTTP: one engine process, rewards from the
reserved token's logit equal to the torch reference scorer in float32, critiques that never
show the reserved token, a hot reload that moves the rewards with the new head, a drain on
SIGTERM, and a dead engine that fails the health checks. The drain test ends the module's
server, so it runs last of the tests that share it (file order)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.contract.formatting import PromptFormatter
from service.engines.torch_scorer import TorchRewardScorer
from tests.integration.conftest import LiveServer, publish_variant, run_server

pytestmark = pytest.mark.engine

PAIRS = [
    ("What is 17 * 3?", "17 * 3 = 51."),
    ("Name the capital of Australia.", "The capital of Australia is Sydney."),
    (
        "Write a haiku about rain.",
        "Rain taps the window\nsoft grey hours drift into night\nthe street lamps listen",
    ),
]


@pytest.fixture(scope="module")
def one_root(serving_root: CheckpointRoot, served_version: CheckpointVersion) -> CheckpointRoot:
    """The serving root, with the default version current (other tests may have moved it)."""
    serving_root.set_current(served_version.manifest.model_version)
    return serving_root


@pytest.fixture(scope="module")
def one_server(
    one_root: CheckpointRoot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("one") / "server.log"
    with run_server(one_root.root, log, CRM_ENGINE_LAYOUT="one", CRM_RELOAD_POLL_S="0") as server:
        yield server


def rewards_at_m0(server: LiveServer) -> tuple[list[float], str]:
    body = {
        "items": [{"prompt": p, "response": r} for p, r in PAIRS],
        "num_critiques": 0,
        "use_cache": False,
    }
    r = httpx.post(f"{server.url}/score", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return [x["reward"] for x in r.json()["results"]], r.json()["model_version"]


def reference(version: CheckpointVersion, formatter: PromptFormatter) -> list[float]:
    scorer = TorchRewardScorer.load(version.scorer_path, "float32")
    seqs = [
        formatter.score_ids(formatter.encode_item(p, r, 16, 1).score_prefix, None) for p, r in PAIRS
    ]
    return scorer.score_sync(seqs)


def engine_cores(server: LiveServer) -> list[psutil.Process]:
    """The gateway's engine children (multiprocessing's resource tracker is not one)."""
    return [
        p
        for p in psutil.Process(server.process.pid).children()
        if "resource_tracker" not in " ".join(p.cmdline())
    ]


def gone(procs: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def test_one_engine_process_serves_both_heads(
    one_server: LiveServer, served_version: CheckpointVersion, formatter: PromptFormatter
) -> None:
    info = httpx.get(f"{one_server.url}/info", timeout=10).json()
    assert info["engines"]["layout"] == "one"
    # One engine core: the gateway's only engine child (layout two starts two).
    cores = engine_cores(one_server)
    assert len(cores) == 1, [p.cmdline() for p in cores]
    got, version = rewards_at_m0(one_server)
    assert version == served_version.manifest.model_version
    assert got == pytest.approx(reference(served_version, formatter), abs=1e-3)
    metrics = httpx.get(f"{one_server.url}/metrics", timeout=10).text
    assert 'engine_layout="one"' in metrics


def test_critiques_and_their_rewards_come_from_the_same_engine(
    one_server: LiveServer, formatter: PromptFormatter
) -> None:
    body = {
        "items": [{"prompt": p, "response": r} for p, r in PAIRS[:2]],
        "num_critiques": 2,
        "max_critique_tokens": 16,
        "return_critiques": True,
        "use_cache": False,
    }
    r = httpx.post(f"{one_server.url}/score", json=body, timeout=300)
    assert r.status_code == 200, r.text
    token = formatter.tokenizer.convert_ids_to_tokens(formatter.reward_logit_id())
    for res in r.json()["results"]:
        assert len(res["critique_rewards"]) == 2 and all(c for c in res["critiques"])
        assert all(token not in c for c in res["critiques"])
        assert res["reward"] == pytest.approx(sum(res["critique_rewards"]) / 2, abs=1e-6)


def test_a_hot_reload_moves_the_rewards_with_the_new_head(
    one_server: LiveServer,
    one_root: CheckpointRoot,
    served_version: CheckpointVersion,
    formatter: PromptFormatter,
) -> None:
    before, _ = rewards_at_m0(one_server)
    variant = publish_variant(one_root, served_version, seed=7)
    try:
        r = httpx.post(f"{one_server.url}/admin/reload", json={"version": variant}, timeout=600)
        assert r.status_code == 200, r.text
        after, version = rewards_at_m0(one_server)
        assert version == variant
        expected = reference(one_root.resolve(variant, verify_hashes=False), formatter)
        assert after == pytest.approx(expected, abs=1e-3)
        assert after != pytest.approx(before, abs=1e-3)
    finally:
        one_root.set_current(served_version.manifest.model_version)


def assert_drains(server: LiveServer) -> None:
    """SIGTERM with requests in flight: /ready turns 503 and new work is refused, the requests
    in flight are answered, the gateway exits 0 and its engine process is gone."""
    body = {
        "items": [{"prompt": "Explain rain.", "response": "Water falls."}],
        "num_critiques": 2,
        "max_critique_tokens": 48,
        "use_cache": False,
    }
    cores = engine_cores(server)
    with ThreadPoolExecutor(3) as pool:
        inflight = [
            pool.submit(httpx.post, f"{server.url}/score", json=body, timeout=300) for _ in range(3)
        ]
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = httpx.get(f"{server.url}/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.post(f"{server.url}/score", json=body, timeout=10).status_code == 503
        assert [f.result().status_code for f in inflight] == [200, 200, 200]
    assert server.process.wait(timeout=120) == 0, server.log_tail()
    assert gone(cores), "the engine process outlived the gateway"


def test_sigterm_drains_the_one_engine_then_exits_zero(one_server: LiveServer) -> None:
    assert_drains(one_server)


def test_a_dead_one_engine_fails_health_and_the_gateway_exits_nonzero(
    one_root: CheckpointRoot, tmp_path: Path
) -> None:
    """Kill the one engine: the health monitor sees it within its interval, fails readiness,
    and the gateway exits 1 for the orchestrator to restart it."""
    env = {"CRM_ENGINE_LAYOUT": "one", "CRM_RELOAD_POLL_S": "0", "CRM_HEALTH_INTERVAL_S": "0.5"}
    with run_server(one_root.root, tmp_path / "server.log", **env) as server:
        assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "alive"
        (core,) = engine_cores(server)
        core.kill()
        t0 = time.monotonic()
        # The monitor checks every 0.5 s; the drain has nothing in flight to wait for.
        assert server.process.wait(timeout=60) == 1, server.log_tail()
        assert time.monotonic() - t0 < 30
        assert "engine failed its health check" in server.log_tail()
