"""Server processes the bench starts and stops, and Prometheus counters it reads from them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(
    cmd: Sequence[str],
    ready_url: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 900,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` in its own process group, wait until `ready_url` answers 200, and on exit
    stop the whole group (engine-core children included)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_url} not ready after {timeout_s:.0f}s")
                time.sleep(1)
            yield proc
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 60) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def counters(metrics_url: str, names: Sequence[str]) -> dict[str, float]:
    """Sum of every sample of each named counter (all label sets), keyed by
    `name` or `name{label=value,...}` for each label set too."""
    text = httpx.get(metrics_url, timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = sample.name.removesuffix("_total")
            if base not in names or sample.name.endswith("_created"):
                continue
            out[base] = out.get(base, 0.0) + sample.value
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            key = f"{base}{{{labels}}}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


def delta(after: Mapping[str, float], before: Mapping[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)
