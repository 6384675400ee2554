"""Reload requests that name nothing, the served version, or an alias folder: no second set of
engines for what is already served, no silent pin, no reload loop on a misnamed folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.checkpoint.bootstrap import bootstrap
from service.checkpoint.store import CheckpointRoot
from service.model.runtime import ModelRuntime
from service.settings import Settings
from tests.fakes import fake_runtime, wait_ready

Loader = Callable[[Settings, "str | None"], Awaitable[ModelRuntime]]


@pytest.fixture()
def root(tiny_llama: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    bootstrap(root, tiny_llama, seed=0)
    return root


def counting_loader(root: Path, calls: list[str | None]) -> Loader:
    async def load(settings: Settings, version: str | None = None) -> ModelRuntime:
        calls.append(version)
        resolved = await asyncio.to_thread(CheckpointRoot(root).resolve, version, False)
        return await asyncio.to_thread(fake_runtime, resolved, settings)

    return load


def client(root: Path, calls: list[str | None], **kw: float) -> TestClient:
    settings = Settings(checkpoint_root=root, warmup=False, max_model_len=512, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings, counting_loader(root, calls)))


def test_an_empty_version_is_a_422_and_changes_nothing(root: Path) -> None:
    calls: list[str | None] = []
    with client(root, calls, reload_poll_s=0) as c:
        wait_ready(c)
        r = c.post("/admin/reload", json={"version": ""})
        assert r.status_code == 422 and r.json()["error"]["field"] == "version", r.text
        for bad in ("../x", ".hidden", "a b", "x" * 200):
            r = c.post("/admin/reload", json={"version": bad})
            assert r.status_code == 422 and r.json()["error"]["field"] == "version", bad
        assert len(calls) == 1, calls
        assert c.get("/info").json()["reload"]["follow_current"] is True


def test_reloading_the_served_version_is_a_no_op(root: Path) -> None:
    calls: list[str | None] = []
    with client(root, calls, reload_poll_s=0) as c:
        wait_ready(c)
        served = c.get("/ready").json()["model_version"]
        t0 = time.monotonic()
        for body in ({}, {"version": served}):
            r = c.post("/admin/reload", json=body)
            assert r.status_code == 200 and r.json()["status"] == "unchanged", r.text
        assert time.monotonic() - t0 < 2
        assert len(calls) == 1, "a second set of engines was started for the served version"


def alias(root: Path, name: str) -> Path:
    """A published-looking folder whose manifest names another version (hard-linked copy)."""
    store = CheckpointRoot(root)
    source = store.resolve(verify_hashes=False).path
    target = store.versions_dir / name
    shutil.copytree(source, target, symlinks=True, copy_function=os.link)
    return target


def test_a_folder_whose_manifest_names_another_version_is_refused_once(root: Path) -> None:
    calls: list[str | None] = []
    alias(root, "alias")
    with client(root, calls, reload_poll_s=0.05) as c:
        wait_ready(c)
        served = c.get("/ready").json()["model_version"]
        r = c.post("/admin/reload", json={"version": "alias"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "version"
        assert "folder holds version" in r.json()["error"]["message"]
        assert str(root) not in r.text
        # `current` moved to the alias: one failed attempt, not one every poll.
        tmp = root / ".current.tmp"
        os.symlink(Path("versions") / "alias", tmp)
        os.replace(tmp, root / "current")
        time.sleep(1.0)
        assert calls.count("alias") == 2, calls  # the admin request above, then one poll
        assert c.get("/ready").json()["model_version"] == served
        last = c.get("/info").json()["reload"]["last"]
        assert last["result"] == "failed" and "<path>" not in last["error"]


def test_a_renamed_version_folder_still_loads_on_its_own(root: Path) -> None:
    """`critic-rm eval --checkpoint <dir>` reads a folder directly; only a root's versions must
    carry their own id."""
    from service.checkpoint.store import load_version

    folder = alias(root, "copied-elsewhere")
    assert load_version(folder, verify_hashes=False).manifest.model_version != "copied-elsewhere"
