"""Key sources that are empty, comments only, deleted, unreadable or rotated mid-flood: auth
fails closed, answers JSON (never a 500, never a server path) and says so in /ready."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.fakes import loader_for

SCORE = {"items": [{"prompt": "q", "response": "a"}], "num_critiques": 1}


def app_with(root: Path, **kw: Any) -> TestClient:
    settings = Settings(checkpoint_root=root, warmup=False, max_model_len=512, **kw)
    return TestClient(create_app(settings, loader_for(root)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_loaded(c: TestClient) -> None:
    for _ in range(200):
        if c.app.state.model.health.state == "ready":  # type: ignore[attr-defined]
            return
        threading.Event().wait(0.05)
    raise AssertionError("fake model did not load")


def assert_denied(r: Any, status: int, secret_path: Path | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    if secret_path is not None:
        assert str(secret_path) not in r.text and secret_path.name not in r.text


@pytest.mark.parametrize(
    "content",
    ["", "\n\n", "# keys rotated out\n", "   # indented comment\n\n"],
    ids=["empty", "blank-lines", "comment", "indented-comment"],
)
def test_an_empty_keys_file_denies_everything(
    checkpoint_root: Path, tmp_path: Path, content: str
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    with app_with(checkpoint_root, api_keys_file=keys) as c:
        wait_loaded(c)
        for headers in ({}, bearer("anything"), bearer("# keys rotated out")):
            r = c.post("/score", json=SCORE, headers=headers)
            assert_denied(r, 503, keys)
            assert r.json()["error"]["code"] == "auth_unavailable"
        assert_denied(c.post("/admin/reload", json={}), 403)
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "auth_unavailable"
        assert c.get("/info").status_code == 503
        assert c.get("/openapi.json").status_code == 503


def test_an_empty_key_variable_is_a_source_that_denies(checkpoint_root: Path) -> None:
    os.environ["CRM_API_KEYS"] = ""
    try:
        settings = Settings(checkpoint_root=checkpoint_root, warmup=False, max_model_len=512)
    finally:
        del os.environ["CRM_API_KEYS"]
    with TestClient(create_app(settings, loader_for(checkpoint_root))) as c:
        wait_loaded(c)
        assert_denied(c.post("/score", json=SCORE), 503)


def test_a_deleted_keys_file_denies_without_500_or_path_then_recovers(
    checkpoint_root: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "secret-keys"
    keys.write_text("k1\n")
    with app_with(checkpoint_root, api_keys_file=keys, admin_api_key="boss") as c:
        wait_loaded(c)
        assert c.post("/score", json=SCORE, headers=bearer("k1")).status_code == 200
        keys.unlink()
        for _ in range(3):  # every request, not only the first
            r = c.post("/score", json=SCORE, headers=bearer("k1"))
            assert_denied(r, 503, keys)
            assert "missing" in r.json()["error"]["message"]
            assert_denied(c.post("/score", json=SCORE), 503, keys)
        # The admin key does not depend on the scoring key file.
        assert c.post("/admin/reload", json={}).status_code == 401
        assert c.post("/admin/reload", json={}, headers=bearer("boss")).status_code == 200
        assert c.get("/ready").json()["status"] == "auth_unavailable"
        keys.write_text("k2\n")
        assert c.post("/score", json=SCORE, headers=bearer("k2")).status_code == 200
        assert c.post("/score", json=SCORE, headers=bearer("k1")).status_code == 403
        assert c.get("/ready").status_code == 200


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_an_unreadable_keys_file_denies(checkpoint_root: Path, tmp_path: Path, kind: str) -> None:
    # Root reads any file whatever its mode, so unreadable means a directory or bad bytes here.
    keys = tmp_path / "keys"
    if kind == "directory":
        keys.mkdir()
    else:
        keys.write_bytes(b"\xff\xfe\x00k1\n")
    with app_with(checkpoint_root, api_keys_file=keys) as c:
        wait_loaded(c)
        r = c.post("/score", json=SCORE, headers=bearer("k1"))
        assert_denied(r, 503, keys)
        assert "cannot be read" in r.json()["error"]["message"]


def test_env_keys_still_work_beside_a_broken_file(checkpoint_root: Path, tmp_path: Path) -> None:
    with app_with(checkpoint_root, api_keys=["env-key"], api_keys_file=tmp_path / "gone") as c:
        wait_loaded(c)
        assert c.post("/score", json=SCORE, headers=bearer("env-key")).status_code == 200
        assert c.post("/score", json=SCORE, headers=bearer("file-key")).status_code == 403
        ready = c.get("/ready").json()
        assert any("missing" in w for w in ready["warnings"]), ready


def test_rotation_mid_flood_never_lets_anyone_in_or_fails(
    checkpoint_root: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("old-key\n")
    statuses: dict[str, list[int]] = {"old-key": [], "new-key": [], "none": []}
    stop = threading.Event()

    def flood(c: TestClient, key: str) -> None:
        headers = bearer(key) if key != "none" else {}
        while not stop.is_set():
            statuses[key].append(c.post("/score", json=SCORE, headers=headers).status_code)

    with app_with(checkpoint_root, api_keys_file=keys) as c:
        wait_loaded(c)
        threads = [threading.Thread(target=flood, args=(c, k)) for k in statuses]
        for t in threads:
            t.start()
        for i in range(20):  # atomic rotations, as a Secret update does (rename over)
            tmp = tmp_path / f"keys.{i}"
            tmp.write_text("# rotated\nnew-key\n" if i % 2 == 0 else "old-key\n")
            os.replace(tmp, keys)
            threading.Event().wait(0.02)
        stop.set()
        for t in threads:
            t.join()
        assert c.post("/score", json=SCORE, headers=bearer("old-key")).status_code == 200
    assert set(statuses["none"]) == {401}, set(statuses["none"])
    for key in ("old-key", "new-key"):
        assert set(statuses[key]) <= {200, 403}, (key, set(statuses[key]))
        assert statuses[key], key
    assert 200 in statuses["new-key"]


def test_describing_routes_need_a_key_and_probes_stay_open(
    checkpoint_root: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k1\n")
    with app_with(checkpoint_root, api_keys_file=keys) as c:
        wait_loaded(c)
        for path in ("/info", "/openapi.json", "/docs"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=bearer("k1")).status_code == 200, path
        for path in ("/health", "/ready", "/metrics"):
            assert c.get(path).status_code == 200, path
        assert c.get("/redoc").status_code == 404
        info = c.get("/info", headers=bearer("k1")).text
        assert str(checkpoint_root) not in info and "/work/" not in info


def test_an_open_service_says_so(checkpoint_root: Path) -> None:
    with app_with(checkpoint_root) as c:
        wait_loaded(c)
        ready = c.get("/ready").json()
        assert ready["auth"] == "open" and any("open" in w for w in ready["warnings"])
        assert c.post("/score", json=SCORE).status_code == 200
