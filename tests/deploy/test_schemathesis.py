"""Schemathesis (the CLI from .venv-tools) fuzzes every operation of the gateway's own OpenAPI
schema (/openapi.json), served by uvicorn on 127.0.0.1 over fake engines. The fake engines never
fail by themselves, so any 5xx is a gateway bug; responses must also match the published schema.

Custom check `no_server_error` (tests/deploy/schemathesis_hooks.py) is the built-in
`not_a_server_error` minus the 504 a client gets on purpose for a sub-second X-Request-Timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.deploy.tooling import require_tool
from tests.fakes import loader_for

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
SEED = 20240611
MAX_EXAMPLES = 100  # per operation and phase; the whole run takes a few seconds
CHECKS = [
    "no_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "content_type_conformance",
    "unsupported_method",
]


@dataclass
class Gateway:
    url: str
    errors: list[str] = field(default_factory=list)  # server-side ERROR log records

    def server_log(self) -> str:
        return "\n".join(self.errors)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))


@pytest.fixture(scope="module")
def gateway(checkpoint_root: Path) -> Iterator[Gateway]:
    """The gateway on fake engines behind a real uvicorn socket on loopback."""
    settings = Settings(
        checkpoint_root=checkpoint_root,
        warmup=False,
        max_model_len=512,
        batch_max_wait_ms=0,
        reload_poll_s=0,
        health_interval_s=0,
    )
    app = create_app(settings, loader_for(checkpoint_root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = Gateway(f"http://127.0.0.1:{port}")
    handler = _Collect(gw.errors)
    logging.getLogger().addHandler(handler)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ready = False
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=5) as c:
        while not ready and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                ready = c.get("/ready").status_code == 200
            if not ready:
                time.sleep(0.05)
    try:
        assert ready, "the fake gateway did not become ready"
        yield gw
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger().removeHandler(handler)


def schemathesis(gw: Gateway, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`schemathesis run` against the gateway's schema; prints its report and the server log."""
    st = require_tool("schemathesis")
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    cmd = [
        str(st),
        "run",
        f"{gw.url}/openapi.json",
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--output-truncate",
        "false",
        *args,
    ]
    gw.errors.clear()
    # cwd: a scratch directory, so no schemathesis.toml is picked up and nothing is written
    # into the checkout.
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=150, check=False
    )
    print(" ".join(cmd[1:]))
    print(proc.stdout[-30000:])
    print(proc.stderr[-5000:])
    if gw.errors:
        print("--- server log (ERROR) ---\n" + gw.server_log()[-20000:])
    return proc


def test_fuzz_all_operations(gateway: Gateway, tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = schemathesis(
        gateway,
        tmp_path,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
    )
    elapsed = time.monotonic() - t0
    assert "10 selected / 10 total" in proc.stdout, "the schema lost operations"
    assert proc.returncode == 0, (
        f"schemathesis reported failures (exit {proc.returncode}, {elapsed:.0f}s); see its "
        f"report above\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}\n"
        f"--- server log ---\n{gateway.server_log()[-6000:]}"
    )


# Inputs the fuzzer cannot reach: schemathesis only generates UTF-8-encodable strings (no lone
# surrogates, which JSON allows as \\udXXX escapes) and short ones. Each once gave a 5xx.
EDGE_INPUTS = [
    pytest.param(
        "/score",
        '{"items": [{"prompt": "hi", "response": "a\\ud800"}]}',
        id="score-lone-surrogate",
    ),
    pytest.param(
        "/critique",
        '{"prompt": "\\udfff", "response": "a"}',
        id="critique-lone-surrogate",
    ),
    pytest.param(
        "/admin/reload",
        '{"version": "\\udc80"}',
        id="reload-lone-surrogate",
    ),
    pytest.param(
        "/admin/reload",
        json.dumps({"version": "v" * 300}),
        id="reload-overlong-version",
    ),
]


@pytest.mark.parametrize(("path", "body"), EDGE_INPUTS)
def test_inputs_beyond_the_fuzzer_are_refused_as_client_errors(
    gateway: Gateway, path: str, body: str
) -> None:
    gateway.errors.clear()
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10) as c:
        r = c.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, f"{r.status_code} {r.text}\n{gateway.server_log()[-4000:]}"
    assert r.json()["error"]["field"]
