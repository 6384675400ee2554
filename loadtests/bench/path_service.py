"""Path a (and the m = 0 standard-RM path): critic-rm over HTTP, started as `critic-rm serve`.

OpenRLHF-style load is many concurrent single-item requests; the batched client sends /score with
`batch` items per request. Every request sets use_cache=false so the engines do all the work."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench.measure import Meter, PathRun
from loadtests.bench.procs import counters, delta, free_port, server_process
from loadtests.bench.workload import Pair, Workload

COUNTERS = [
    "critic_rm_prompt_tokens",
    "critic_rm_queue_wait_seconds_sum",
    "critic_rm_stage_seconds_sum",
    "critic_rm_generate_seconds_sum",
    "critic_rm_score_seconds_sum",
    "critic_rm_request_duration_seconds_sum",
]


@contextmanager
def critic_rm_server(
    checkpoint_root: Path, logs: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "service.cli", "serve"]
    server_env = {
        "CRM_CHECKPOINT_ROOT": str(checkpoint_root),
        "CRM_HOST": "127.0.0.1",
        "CRM_PORT": str(port),
        "CRM_LOG_LEVEL": "warning",
        "CRM_MAX_QUEUE_ITEMS": "100000",
        **(env or {}),
    }
    with server_process(cmd, f"{url}/ready", logs / "critic-rm.log", server_env):
        yield url


def _body(pairs: list[Pair], w: Workload, m: int) -> dict[str, Any]:
    return {
        "items": [p.to_json() for p in pairs],
        "num_critiques": m,
        "max_critique_tokens": w.max_tokens,
        "temperature": w.temperature,
        "top_p": w.top_p,
        "use_cache": False,
        "return_critiques": True,
    }


async def _post(
    c: httpx.AsyncClient, body: dict[str, Any], latencies: list[float]
) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    r = await c.post("/score", json=body)
    r.raise_for_status()
    latencies.append(time.perf_counter() - t0)
    return list(r.json()["results"])


def run(
    url: str,
    w: Workload,
    *,
    mode: str,
    concurrency: int,
    batch: int,
    m: int | None = None,
    tag: str = "",
) -> tuple[PathRun, list[dict[str, Any]]]:
    """mode 'single': one item per request, `concurrency` in flight; 'batched': `batch` items per
    request, one request at a time. Returns the run and the per-item results; `tag` names the
    engine layout in the path (none for the default)."""
    m = w.m if m is None else m
    before = counters(f"{url}/metrics", COUNTERS)
    latencies: list[float] = []

    async def drive() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=concurrency + 4)
        async with httpx.AsyncClient(base_url=url, timeout=7200, limits=limits) as c:
            if mode == "batched":
                out: list[dict[str, Any]] = []
                for i in range(0, w.n, batch):
                    out += await _post(c, _body(w.pairs[i : i + batch], w, m), latencies)
                return out
            gate = asyncio.Semaphore(concurrency)

            async def one(p: Pair) -> dict[str, Any]:
                async with gate:
                    return (await _post(c, _body([p], w, m), latencies))[0]

            return list(await asyncio.gather(*(one(p) for p in w.pairs)))

    with Meter() as meter:
        results = asyncio.run(drive())
    after = counters(f"{url}/metrics", COUNTERS)
    total = sum(
        delta(after, before, f"critic_rm_prompt_tokens{{engine={e},kind=total}}")
        for e in ("generator", "scorer")
    )
    cached = sum(
        delta(after, before, f"critic_rm_prompt_tokens{{engine={e},kind=cached}}")
        for e in ("generator", "scorer")
    )
    breakdown = {
        "queue": delta(after, before, "critic_rm_queue_wait_seconds_sum"),
        "tokenize": delta(after, before, "critic_rm_stage_seconds_sum{stage=tokenize}"),
        "generate": delta(after, before, "critic_rm_generate_seconds_sum"),
        "score_inputs": delta(after, before, "critic_rm_stage_seconds_sum{stage=score_inputs}"),
        "score": delta(after, before, "critic_rm_score_seconds_sum"),
        "request_total": delta(after, before, "critic_rm_request_duration_seconds_sum"),
    }
    label = (
        f"critic-rm HTTP, {concurrency} concurrent single-item requests, m={m}"
        if mode == "single"
        else f"critic-rm HTTP, /score with {batch} items per request, m={m}"
    )
    path_run = PathRun(
        path=(f"a:{mode}" if m > 0 else "e:critic-rm-m0") + tag,
        label=label,
        pairs=w.n,
        wall_s=meter.wall_s,
        cpu_s=meter.cpu_s,
        latencies_s=latencies,
        prompt_tokens=int(total),
        computed_tokens=int(total - cached),
        rewards=[float(r["reward"]) for r in results],
        breakdown_s=breakdown,
    )
    return path_run, results
