"""One real gateway (vLLM generator + vLLM pooling scorer over the bootstrapped SmolLM2
checkpoint, Redis cache) started once per test session in a subprocess, reached over HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.checkpoint.variant import publish_head_variant
from service.contract.formatting import PromptFormatter
from service.engines.config import EngineConfig
from service.engines.factory import load_formatter

MAX_MODEL_LEN = 1024
# The port of the session's external /refine policy (a `vllm serve` of the generator view, in
# test_refine_http.py); the shared gateway allow-lists it from its start.
POLICY_PORT = 0
START_TIMEOUT_S = float(os.environ.get("CRM_TEST_START_TIMEOUT_S", "900"))


@dataclass
class LiveServer:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish_variant(root: CheckpointRoot, base: CheckpointVersion, seed: int) -> str:
    """Another version of `base` with a different reward head; backbone files hard-linked."""
    return publish_head_variant(root, base, seed)


@pytest.fixture(scope="session")
def serving_root(checkpoint_root: Path) -> Iterator[CheckpointRoot]:
    """A private checkpoint root holding the default version (hard links, no copy), so tests
    can publish and switch versions without touching the user's root."""
    root = CheckpointRoot(checkpoint_root / ".test-roots" / uuid.uuid4().hex)
    base = CheckpointRoot(checkpoint_root).resolve(verify_hashes=False)
    shutil.copytree(
        base.path,
        root.version_path(base.manifest.model_version),
        symlinks=True,
        copy_function=os.link,
    )
    root.set_current(base.manifest.model_version)
    try:
        yield root
    finally:
        shutil.rmtree(root.root, ignore_errors=True)


def server_env(checkpoint_root: Path, port: int, **env_extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CRM_CHECKPOINT_ROOT": str(checkpoint_root),
        "CRM_HOST": "127.0.0.1",
        "CRM_PORT": str(port),
        "CRM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "CRM_KV_CACHE_GIB": "1",
        "CRM_SCORER_DTYPE": "float32",
        # The default, auto, picks the layout by the CPU's bf16; tests of the one-engine
        # layout ask for it, so these run the same layout on every machine.
        "CRM_ENGINE_LAYOUT": "two",
        "CRM_MAX_ITEMS_PER_REQUEST": "512",
        "CRM_RELOAD_POLL_S": "0.5",
        "CRM_DRAIN_TIMEOUT_S": "60",
        **env_extra,
    }


def start_server(checkpoint_root: Path, log: Path, **env_extra: str) -> LiveServer:
    """`critic-rm serve` on `checkpoint_root` in a subprocess, not waited for."""
    port = free_port()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=server_env(checkpoint_root, port, **env_extra),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    return LiveServer(f"http://127.0.0.1:{port}", log, proc)


@contextlib.contextmanager
def run_server(checkpoint_root: Path, log: Path, **env_extra: str) -> Iterator[LiveServer]:
    """`critic-rm serve` on `checkpoint_root` in a subprocess, yielded once /ready is 200."""
    server = start_server(checkpoint_root, log, **env_extra)
    proc = server.process
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        with server.client(timeout=5) as c:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode}:\n{server.log_tail()}")
                try:
                    r = c.get("/ready")
                    if r.status_code == 200:
                        break
                    if r.json().get("status") == "failed":
                        pytest.fail(f"model load failed: {r.json()}\n{server.log_tail()}")
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready after {START_TIMEOUT_S}s:\n{server.log_tail()}")
                time.sleep(1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()


def policy_base_url() -> str:
    """The allow-listed policy base URL (its port chosen once per session)."""
    global POLICY_PORT
    if not POLICY_PORT:
        POLICY_PORT = free_port()
    return f"http://127.0.0.1:{POLICY_PORT}/v1"


# The tests that stop the shared gateway or leave it on another version run after the other
# integration tests (see pytest_collection_modifyitems): a restart costs two engine starts, and
# this way none is needed. Before the unit tests, not after them: a unit test of the trainer's
# SIGTERM handling ends the test process's children, the shared gateway among them.
RUN_LAST = ("tests/integration/test_engine_lifecycle.py",)
INTEGRATION = "tests/integration/"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    last = [i for i in items if i.nodeid.startswith(RUN_LAST)]
    rest = [i for i in items if not i.nodeid.startswith(RUN_LAST)]
    after = max((n for n, i in enumerate(rest) if i.nodeid.startswith(INTEGRATION)), default=-1)
    items[:] = rest[: after + 1] + last + rest[after + 1 :]


class SharedServer:
    """The session's one gateway, started on first use. A test may stop it, or leave it serving
    another version (`on_default = False`; test_engine_lifecycle.py does both); the next test
    that asks for the default gets a fresh one on the default version, so no test depends on
    the order they run in (the order only saves restarts)."""

    def __init__(self, root: CheckpointRoot, redis_url: str, logs: Path) -> None:
        self.root = root
        self.redis_url = redis_url
        self.logs = logs
        default = root.current_version()
        assert default is not None, f"{root.root} has no current version"
        self.default = default
        self.starts = 0
        self.on_default = True
        self._server: LiveServer | None = None
        self._running: contextlib.ExitStack | None = None

    def get(self, any_version: bool = False) -> LiveServer:
        """The running gateway (on the default version unless `any_version`), else a new one."""
        running = self._server is not None and self._server.process.poll() is None
        if self._server is not None and running and (self.on_default or any_version):
            return self._server
        self.close()
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()
        # A stopped server may have left the root pointing elsewhere: serve the default again.
        self.root.set_current(self.default)
        self.starts += 1
        self.on_default = True
        stack = contextlib.ExitStack()
        log = self.logs / f"server-{self.starts}.log"
        self._server = stack.enter_context(
            run_server(
                self.root.root,
                log,
                CRM_REDIS_URL=self.redis_url,
                CRM_POLICY_ALLOWLIST=policy_base_url(),
                CRM_POLICY_ALLOW_PRIVATE="true",
            )
        )
        self._running = stack
        return self._server

    def close(self) -> None:
        if self._running is not None:
            self._running.close()
        self._server = self._running = None


@pytest.fixture(scope="session")
def shared_server(
    serving_root: CheckpointRoot, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedServer]:
    shared = SharedServer(serving_root, redis_url, tmp_path_factory.mktemp("server"))
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def live_server(shared_server: SharedServer) -> LiveServer:
    return shared_server.get()


@pytest.fixture
def live_server_any_version(shared_server: SharedServer) -> LiveServer:
    """The shared gateway on whichever version it serves (no restart to get the default)."""
    return shared_server.get(any_version=True)


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as c:
        yield c


@pytest.fixture(scope="session")
def served_version(serving_root: CheckpointRoot) -> CheckpointVersion:
    return serving_root.resolve(verify_hashes=False)


@pytest.fixture(scope="session")
def formatter(served_version: CheckpointVersion) -> PromptFormatter:
    return load_formatter(served_version, EngineConfig(max_model_len=MAX_MODEL_LEN))
