"""Hot reload on fake engines: swap under load without failures or mixed versions, corrupt
versions refused while the old one serves, following `current`, admin auth, and two replicas
converging through Redis."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.checkpoint.bootstrap import bootstrap
from service.checkpoint.manifest import REWARD_HEAD_FILE
from service.checkpoint.store import CheckpointRoot
from service.model.runtime import ModelRuntime
from service.settings import Settings
from tests.fakes import FakeGenerator, fake_runtime, running


@pytest.fixture()
def two_versions(tiny_llama: Path, tmp_path: Path) -> tuple[Path, str, str]:
    root = tmp_path / "root"
    v1 = bootstrap(root, tiny_llama, seed=0).manifest.model_version
    v2 = bootstrap(root, tiny_llama, seed=1, make_current=False).manifest.model_version
    return root, v1, v2


def tagged_loader(root: Path):  # type: ignore[no-untyped-def]
    async def load(settings: Settings, version: str | None = None) -> ModelRuntime:
        resolved = await asyncio.to_thread(CheckpointRoot(root).resolve, version, True)
        runtime = await asyncio.to_thread(fake_runtime, resolved, settings, True)
        runtime.generator.delay_s = 0.05  # type: ignore[attr-defined]
        return runtime

    return load


def make_app(root: Path, **kw: Any) -> FastAPI:
    settings = Settings(checkpoint_root=root, warmup=True, max_model_len=512, **kw)
    return create_app(settings, tagged_loader(root))


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_reload_under_load_never_fails_or_mixes_versions(
    two_versions: tuple[Path, str, str],
) -> None:
    root, v1, v2 = two_versions
    app = make_app(root, reload_poll_s=0)
    async with running(app) as c:
        old_gen: FakeGenerator = app.state.service.runtime.generator
        stop = asyncio.Event()
        responses: list[httpx.Response] = []

        async def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                body = {
                    "items": [
                        {"prompt": f"q{i}-{n}", "response": "a"},
                        {"prompt": "shared", "response": "b"},
                    ],
                    "num_critiques": 2,
                    "return_critiques": True,
                    "use_cache": False,
                }
                responses.append(await c.post("/score", json=body))
                n += 1

        clients = [asyncio.ensure_future(client(i)) for i in range(8)]
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        r = await c.post("/admin/reload", json={"version": v2})
        swap_s = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        assert r.json() == {
            "status": "reloaded",
            "model_version": v2,
            "previous": v1,
            "follow_current": False,
        }
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        await until(lambda: old_gen.shut_down)

    assert [x.status_code for x in responses] == [200] * len(responses)
    versions = [x.json()["model_version"] for x in responses]
    assert set(versions) == {v1, v2} and versions.count(v2) > 0
    for x in responses:
        body = x.json()
        for item in body["results"]:
            assert all(
                crit.endswith(f"by {body['model_version']}") for crit in item["critiques"]
            ), (body["model_version"], item["critiques"])
    assert swap_s < 5


async def test_a_refine_runs_wholly_on_the_version_it_started_on(
    two_versions: tuple[Path, str, str],
) -> None:
    root, v1, v2 = two_versions
    app = make_app(root, reload_poll_s=0)
    async with running(app) as c:
        gen = app.state.service.runtime.generator
        gen.verdict, gen.delay_s = "Incorrect", 0.2  # 11 generator calls: about 2 s
        body = {"prompt": "q", "response": "a", "rounds": 3, "stop": "never", "use_cache": False}
        refine = asyncio.ensure_future(c.post("/refine", json=body))
        await asyncio.sleep(0.2)  # a round or two in
        r = await c.post("/admin/reload", json={"version": v2})
        assert r.status_code == 200, r.text
        assert not refine.done()  # the swap landed mid-refine
        out = (await refine).json()
        after = (await c.post("/refine", json={**body, "rounds": 1})).json()
    assert out["model_version"] == v1 and len(out["rounds"]) == 3
    texts = [c["text"] for s in [out["original"]] for c in s["critiques"]]
    for r_ in out["rounds"]:
        texts.append(r_["critique"]["text"])
        for cand in r_["candidates"]:
            texts += [cand["response"], *[c["text"] for c in cand["critiques"]]]
    # Critiques and revisions (the served generator is the policy) all come from v1.
    assert all(f"by {v1}" in t and f"by {v2}" not in t for t in texts), texts
    assert after["model_version"] == v2


async def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(
    two_versions: tuple[Path, str, str],
) -> None:
    root, v1, v2 = two_versions
    head = root / "versions" / v2 / "scorer" / REWARD_HEAD_FILE
    head.write_bytes(head.read_bytes()[:-4] + b"oops")
    app = make_app(root, reload_poll_s=0)
    async with running(app) as c:
        r = await c.post("/admin/reload", json={"version": v2})
        assert r.status_code == 422 and r.json()["error"]["field"] == "version"
        assert "sha256" in r.json()["error"]["message"]
        info = (await c.get("/info")).json()
        assert info["model_version"] == v1
        assert (
            info["reload"]["last"]["result"] == "failed"
            and "sha256" in info["reload"]["last"]["error"]
        )
        r = await c.post("/admin/reload", json={"version": "no-such-version"})
        assert r.status_code == 422
        ok = await c.post("/score", json={"items": [{"prompt": "q", "response": "a"}]})
        assert ok.status_code == 200 and ok.json()["model_version"] == v1
        metrics = (await c.get("/metrics")).text
        assert 'critic_rm_reloads_total{result="failed"} 2.0' in metrics


async def test_the_service_follows_the_current_pointer(two_versions: tuple[Path, str, str]) -> None:
    root, v1, v2 = two_versions
    app = make_app(root, reload_poll_s=0.05)
    async with running(app) as c:
        assert (await c.get("/info")).json()["model_version"] == v1
        CheckpointRoot(root).set_current(v2)
        await until(lambda: app.state.service.runtime.model_version == v2)
        r = await c.post("/score", json={"items": [{"prompt": "q", "response": "a"}]})
        assert r.json()["model_version"] == v2
        # A pinned version is not overridden by the pointer.
        assert (await c.post("/admin/reload", json={"version": v1})).status_code == 200
        await asyncio.sleep(0.3)
        assert app.state.service.runtime.model_version == v1
        # A reload without a version goes back to following `current`.
        r = await c.post("/admin/reload", json={})
        assert r.json()["model_version"] == v2 and r.json()["follow_current"] is True


async def test_a_retired_version_is_freed_before_the_heap_is_trimmed(
    two_versions: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak's gateway grew ~125 MiB per reload until retired versions were trimmed: the trim
    must come once nothing holds the old version, or its pages are still in use."""
    root, v1, v2 = two_versions
    trims: list[bool] = []
    ref: weakref.ref[ModelRuntime] | None = None

    def trim() -> bool:
        gc.collect()
        trims.append(ref is not None and ref() is None)
        return True

    monkeypatch.setattr("service.model.manager.release_free_heap", trim)
    app = make_app(root, reload_poll_s=0)
    async with running(app) as c:
        ref = weakref.ref(app.state.service.runtime)
        assert ref().model_version == v1  # type: ignore[union-attr]
        assert (await c.post("/admin/reload", json={"version": v2})).status_code == 200
        await until(lambda: bool(trims))
        assert trims == [True]
        assert app.state.service.runtime.model_version == v2


async def test_admin_routes_need_the_admin_key(two_versions: tuple[Path, str, str]) -> None:
    root, _v1, v2 = two_versions
    app = make_app(root, reload_poll_s=0, api_keys=["user"], admin_api_key="boss")
    async with running(app) as c:
        assert (await c.post("/admin/reload", json={"version": v2})).status_code == 401
        r = await c.post(
            "/admin/reload", json={"version": v2}, headers={"Authorization": "Bearer user"}
        )
        assert r.status_code == 403
        r = await c.post(
            "/admin/reload", json={"version": v2}, headers={"Authorization": "Bearer boss"}
        )
        assert r.status_code == 200
    app = make_app(root, reload_poll_s=0, api_keys=["user"])
    async with running(app) as c:
        r = await c.post("/admin/reload", json={}, headers={"Authorization": "Bearer user"})
        assert r.status_code == 403 and "CRM_ADMIN_API_KEY" in r.json()["error"]["message"]


async def test_two_replicas_converge_through_redis(
    two_versions: tuple[Path, str, str], redis_url: str
) -> None:
    root, v1, v2 = two_versions
    channel = f"critic-rm:reload:test-{time.time_ns()}"
    a = make_app(root, reload_poll_s=0, redis_url=redis_url, reload_channel=channel)
    b = make_app(root, reload_poll_s=0, redis_url=redis_url, reload_channel=channel)
    async with running(a) as ca, running(b) as cb:
        assert (await cb.get("/info")).json()["model_version"] == v1
        await asyncio.sleep(0.3)  # let both subscribe
        assert (await ca.post("/admin/reload", json={"version": v2})).status_code == 200
        await until(lambda: b.state.service.runtime.model_version == v2)
        assert (await cb.post("/score", json={"items": [{"prompt": "q", "response": "a"}]})).json()[
            "model_version"
        ] == v2
        assert b.state.model.follow_current is False
