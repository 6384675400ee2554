"""The fused layout on a real vLLM engine: a format-2 copy of the default checkpoint (the same
weights and head, read after the critique's own ids) served with CRM_ENGINE_LAYOUT=fused. Every
critique's reward, read while the engine generated it, equals the torch float32 reference
scorer on the very ids it generated; over HTTP: one engine process, m = 0 rewards equal to the
reference, critiques that come with their rewards, a hot reload to a format-1 version (served
on one) and back, and a drain on SIGTERM (last: it ends the module's server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.checkpoint.variant import publish_head_variant
from service.engines.base import SamplingSpec
from service.engines.config import EngineConfig
from service.engines.factory import load_engines, load_formatter
from service.engines.torch_scorer import TorchRewardScorer
from service.engines.vllm_engines import FusedTail, VllmCritiqueGenerator
from tests.integration.conftest import LiveServer, run_server
from tests.integration.test_one_engine_http import PAIRS, assert_drains, engine_cores

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def fused_version(
    serving_root: CheckpointRoot, served_version: CheckpointVersion
) -> Iterator[CheckpointVersion]:
    name = publish_head_variant(serving_root, served_version, None, format_version=2)
    serving_root.set_current(name)
    try:
        yield serving_root.resolve(name, verify_hashes=False)
    finally:
        serving_root.set_current(served_version.manifest.model_version)


def test_each_reward_read_while_generating_equals_the_reference_on_its_own_ids(
    fused_version: CheckpointVersion,
) -> None:
    config = EngineConfig(engine_layout="fused", max_model_len=512, kv_cache_gib=0.5)
    fmt = load_formatter(fused_version, config)
    items = [fmt.encode_item(p, r, 24, 3) for p, r in PAIRS]
    spec = SamplingSpec(3, 0.8, 0.95, 24)

    async def sample() -> tuple[list[list[int]], list[float], list[int]]:
        generator, _ = await load_engines(fused_version, config, fmt)
        assert isinstance(generator, VllmCritiqueGenerator) and generator.fused is not None
        ids: list[list[int]] = []
        tail = generator.fused
        # Record the ids each critique was generated as (decode runs once per completion).
        generator.fused = FusedTail(tail.tail, lambda t: ids.append(list(t)) or tail.decode(t))
        try:
            outs, _ = await generator.generate([i.critique_prompt for i in items], [spec] * 3)
        finally:
            generator.shutdown()
        got = [c.reward for cs in outs for c in cs]
        assert all(r is not None for r in got)
        return (
            ids,
            [float(r) for r in got if r is not None],
            [c.num_tokens for cs in outs for c in cs],
        )

    ids, got, lengths = asyncio.run(sample())
    assert lengths == [len(i) for i in ids] and max(lengths) <= 24
    seqs = [fmt.critique_score_ids(items[k // 3], z) for k, z in enumerate(ids)]
    reference = TorchRewardScorer.load(fused_version.scorer_path, "float32")
    try:
        want = reference.score_sync(seqs)
    finally:
        reference.shutdown()
    assert got == pytest.approx(want, abs=1e-3)


@pytest.fixture(scope="module")
def fused_server(
    serving_root: CheckpointRoot,
    fused_version: CheckpointVersion,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("fused") / "server.log"
    env = {"CRM_ENGINE_LAYOUT": "fused", "CRM_RELOAD_POLL_S": "0"}
    with run_server(serving_root.root, log, **env) as server:
        yield server


def score(server: LiveServer, m: int, tokens: int = 16) -> tuple[list[dict], str]:
    body = {
        "items": [{"prompt": p, "response": r} for p, r in PAIRS],
        "num_critiques": m,
        "max_critique_tokens": tokens,
        "return_critiques": True,
        "use_cache": False,
    }
    r = httpx.post(f"{server.url}/score", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["results"], r.json()["model_version"]


def test_one_fused_engine_serves_critiques_with_their_rewards(
    fused_server: LiveServer, fused_version: CheckpointVersion
) -> None:
    info = httpx.get(f"{fused_server.url}/info", timeout=10).json()
    assert info["engines"]["layout"] == "fused" and info["engines"]["layout_setting"] == "fused"
    assert len(engine_cores(fused_server)) == 1
    assert 'engine_layout="fused"' in httpx.get(f"{fused_server.url}/metrics", timeout=10).text
    fmt = load_formatter(fused_version, EngineConfig(max_model_len=1024))
    results, version = score(fused_server, 0)
    assert version == fused_version.manifest.model_version
    reference = TorchRewardScorer.load(fused_version.scorer_path, "float32")
    try:
        want = reference.score_sync(
            [fmt.critique_score_ids(fmt.encode_item(p, r, 16, 0), None) for p, r in PAIRS]
        )
    finally:
        reference.shutdown()
    assert [x["reward"] for x in results] == pytest.approx(want, abs=1e-3)
    results, _ = score(fused_server, 2)
    for res in results:
        assert len(res["critique_rewards"]) == 2 and all(c for c in res["critiques"])
        assert res["reward"] == pytest.approx(sum(res["critique_rewards"]) / 2, abs=1e-6)
        assert all("<|endoftext|>" not in c and "<|im_end|>" not in c for c in res["critiques"])


def test_a_format_1_version_reloads_onto_one_and_back(
    fused_server: LiveServer,
    serving_root: CheckpointRoot,
    served_version: CheckpointVersion,
    fused_version: CheckpointVersion,
) -> None:
    for version, layout in ((served_version, "one"), (fused_version, "fused")):
        name = version.manifest.model_version
        r = httpx.post(f"{fused_server.url}/admin/reload", json={"version": name}, timeout=600)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{fused_server.url}/info", timeout=10).json()["engines"]["layout"] == (
            layout
        )
        results, got = score(fused_server, 1)
        assert got == name and all(len(x["critique_rewards"]) == 1 for x in results)


def test_a_dead_fused_engine_fails_health_and_the_gateway_exits_nonzero(
    serving_root: CheckpointRoot, fused_version: CheckpointVersion, tmp_path: Path
) -> None:
    env = {"CRM_ENGINE_LAYOUT": "fused", "CRM_RELOAD_POLL_S": "0", "CRM_HEALTH_INTERVAL_S": "0.5"}
    with run_server(serving_root.root, tmp_path / "server.log", **env) as server:
        info = httpx.get(f"{server.url}/info", timeout=10).json()
        assert info["engines"]["layout"] == "fused"
        (core,) = engine_cores(server)
        core.kill()
        assert server.process.wait(timeout=60) == 1, server.log_tail()
        assert "engine failed its health check" in server.log_tail()


def test_sigterm_drains_the_fused_engine_then_exits_zero(fused_server: LiveServer) -> None:
    assert_drains(fused_server)
