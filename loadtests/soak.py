"""Soak: RLHF-shaped load on the real engines for a long while, with faults injected on a schedule.

    .venv/bin/python -m loadtests.soak --minutes 22 --out loadtests/results/soak.json   # make soak

Set-up as loadtests/attack.py does it: a private checkpoint root (hard links to the current
version, plus a second version with another reward head for the reloads), a private
redis-server (so killing it touches nothing else), API keys, and `python -m service.cli serve`
on loopback, all undone at the end.

Traffic, all the run: the locustfile's mix (loadtests/locustfile.py's prompts and responses) of
--single-users OpenRLHF-style clients sending one item per request back to back and
--batch-users GRPO-style clients sending --batch-items items in groups of 8 per prompt, every
request at m = --m critiques of at most --critique-tokens tokens.

Faults, on a schedule relative to the start of traffic (each a phase of its own):
  reload        every --reload-every-s: /admin/reload to the other version, alternately
  redis_down    redis-server SIGKILLed, restarted --redis-down-s later on the same port
  disconnect    --disconnects clients send a batch and hang up after 1 s
  overload      --overload-requests concurrent m = 0 requests of 64 items, more than the
                queue admits (--max-queue-items): 429 expected for most of them

Reported (JSON to --out, markdown beside it, a table printed): requests sent, answered by status,
lost (sent by the steady clients and never answered), results whose model version was not
current when the request started (during a reload call either version is current), p50/p99
latency per phase, and the queue depth and RSS of the gateway and its engines every
--sample-s. Memory is read from the samples taken with one version loaded (a reload holds two
until the old one is retired): its growth while serving (MiB per hour, least squares over the
second half within each stretch between reloads) and the level before each reload and at the
end, whose differences are what each reload left behind. The run passes with zero 5xx outside
the injected faults' own requests, zero lost, zero stale versions, the queue back at 0 at the
end, the gateway's growth while serving under --max-leak-mib-h and the last reload's step
under --max-reload-step-mib (a leak per reload does not shrink; fragmentation does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from loadtests import rollouts
from loadtests.attack import (
    Gateway,
    RedisServer,
    SetupError,
    deploy,
    metric_sum,
    percentile,
)
from loadtests.bench_train import _cpu_model as cpu_model
from service.checkpoint.variant import publish_head_variant

GROUP_SIZE = 8  # the locustfile's default: responses per prompt


def make_items(rng: random.Random, n: int) -> list[dict[str, str]]:
    return rollouts.make_items(rng, n, GROUP_SIZE)


@dataclass
class Req:
    """One request and what came back."""

    kind: str  # single, batch, disconnect, overload
    phase: str  # the phase at its start
    start: float  # seconds since traffic began
    seconds: float = 0.0
    status: int | None = None
    error: str | None = None
    version: str | None = None
    fault: bool = False  # an injected fault's own request

    @property
    def lost(self) -> bool:
        return not self.fault and self.status is None


@dataclass
class Run:
    args: argparse.Namespace
    gateway: Gateway
    redis: RedisServer
    key: str
    admin_key: str
    versions: tuple[str, str]
    t0: float = field(default_factory=time.monotonic)
    reqs: list[Req] = field(default_factory=list)
    # (start, end, old, new) of every reload call; `current` outside them.
    reloads: list[tuple[float, float, str, str]] = field(default_factory=list)
    phases: list[tuple[float, float, str]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    current: str = ""
    initial: str = ""

    def now(self) -> float:
        return time.monotonic() - self.t0

    def phase_at(self, t: float) -> str:
        for start, end, name in reversed(self.phases):
            if start <= t <= end:
                return name
        return "warmup" if t < self.args.warmup_s else "steady"

    def client(self, n: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway.url,
            timeout=httpx.Timeout(self.args.client_timeout_s),
            limits=httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4),
            headers={"authorization": f"Bearer {self.key}"},
            trust_env=False,
        )

    async def send(
        self,
        client: httpx.AsyncClient,
        kind: str,
        body: dict[str, Any],
        *,
        fault: bool = False,
        timeout: float | None = None,
    ) -> Req:
        start = self.now()
        req = Req(kind, self.phase_at(start), round(start, 3), fault=fault)
        self.reqs.append(req)
        t = time.monotonic()
        try:
            r = await client.post(
                "/score", json=body, timeout=timeout if timeout else httpx.USE_CLIENT_DEFAULT
            )
            req.status = r.status_code
            if r.status_code == 200:
                req.version = r.json().get("model_version")
        except httpx.HTTPError as exc:
            req.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            req.seconds = round(time.monotonic() - t, 3)
        return req


def body(items: list[dict[str, str]], m: int, tokens: int) -> dict[str, Any]:
    return {"items": items, "num_critiques": m, "max_critique_tokens": tokens}


async def steady_client(run: Run, kind: str, n_items: int, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    a = run.args
    async with run.client(1) as c:
        while not stop.is_set():
            await run.send(c, kind, body(make_items(rng, n_items), a.m, a.critique_tokens))


async def reloader(run: Run, stop: asyncio.Event) -> None:
    a = run.args
    async with httpx.AsyncClient(
        base_url=run.gateway.url,
        timeout=600,
        trust_env=False,
        headers={"authorization": f"Bearer {run.admin_key}"},
    ) as c:
        k = 0
        while True:
            k += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), a.reload_every_s)
            if stop.is_set():
                return
            old = run.current
            new = run.versions[k % 2]
            start = run.now()
            r = await c.post("/admin/reload", json={"version": new})
            end = run.now()
            run.phases.append((start, end + 10.0, "reload"))
            ok = r.status_code == 200 and r.json().get("model_version") == new
            run.reloads.append((start, end, old, new if ok else old))
            if ok:
                run.current = new
            print(
                f"[{end:7.1f}s] reload {old[-12:]} -> {new[-12:]}: {r.status_code} "
                f"in {end - start:.1f} s",
                flush=True,
            )


async def redis_fault(run: Run) -> None:
    start = run.now()
    run.redis.kill()
    print(f"[{start:7.1f}s] redis-server killed", flush=True)
    await asyncio.sleep(run.args.redis_down_s)
    await asyncio.to_thread(run.redis.start)
    run.phases.append((start, run.now() + 10.0, "redis_down"))
    print(f"[{run.now():7.1f}s] redis-server restarted", flush=True)


async def burst(
    run: Run, kind: str, bodies: list[dict[str, Any]], timeout: float | None = None
) -> list[Req]:
    """All `bodies` at once, each a fault's own request, on a client sized for them."""
    async with run.client(len(bodies)) as c:
        return list(
            await asyncio.gather(
                *(run.send(c, kind, b, fault=True, timeout=timeout) for b in bodies)
            )
        )


async def disconnect_burst(run: Run) -> None:
    a = run.args
    start = run.now()
    rng = random.Random(7)
    bodies = [body(make_items(rng, 16), a.m, a.critique_tokens) for _ in range(a.disconnects)]
    await burst(run, "disconnect", bodies, timeout=1.0)
    run.phases.append((start, run.now() + 20.0, "disconnect"))
    print(f"[{run.now():7.1f}s] {a.disconnects} clients hung up", flush=True)


async def overload_burst(run: Run) -> None:
    a = run.args
    start = run.now()
    rng = random.Random(11)
    bodies = [body(make_items(rng, 64), 0, 1) for _ in range(a.overload_requests)]
    got = await burst(run, "overload", bodies)
    run.phases.append((start, run.now() + 10.0, "overload"))
    codes = Counter(r.status for r in got)
    print(f"[{run.now():7.1f}s] overload burst answered {dict(codes)}", flush=True)


def rss_mib(pid: int) -> tuple[float, float, int]:
    """RSS of the gateway alone and of the gateway with every descendant, MiB, and how many
    engine cores run under it (twice the settled count while a reload holds two versions)."""
    import psutil

    engines = 0
    try:
        p = psutil.Process(pid)
        own = p.memory_info().rss
        total = own
        for child in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
                # setproctitle's name (cut to 15 characters in /proc); an exited engine
                # not yet reaped is a zombie and holds nothing.
                live = child.status() != psutil.STATUS_ZOMBIE
                engines += live and child.name().startswith("VLLM::EngineCor")
    except psutil.Error:
        return 0.0, 0.0, 0
    return own / 2**20, total / 2**20, engines


async def sampler(run: Run, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=run.gateway.url, timeout=10, trust_env=False) as c:
        while not stop.is_set():
            depth = None
            with contextlib.suppress(httpx.HTTPError):
                r = await c.get("/metrics")
                if r.status_code == 200:
                    depth = metric_sum(r.text, "critic_rm_queue_depth")
            own, total, engines = rss_mib(run.gateway.pid)
            run.samples.append(
                {
                    "t": round(run.now(), 1),
                    "phase": run.phase_at(run.now()),
                    "queue_depth": depth,
                    "gateway_rss_mib": round(own, 1),
                    "total_rss_mib": round(total, 1),
                    "engine_procs": engines,
                }
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), run.args.sample_s)


async def at(run: Run, t: float, job: Any) -> None:
    await asyncio.sleep(max(0.0, t - run.now()))
    await job(run)


async def traffic(run: Run) -> dict[str, Any]:
    a = run.args
    total = a.minutes * 60.0
    stop_load, stop_bg = asyncio.Event(), asyncio.Event()
    bg = [asyncio.create_task(sampler(run, stop_bg)), asyncio.create_task(reloader(run, stop_load))]
    clients = [
        asyncio.create_task(steady_client(run, "single", 1, stop_load, seed=i))
        for i in range(a.single_users)
    ] + [
        asyncio.create_task(steady_client(run, "batch", a.batch_items, stop_load, seed=1000 + i))
        for i in range(a.batch_users)
    ]
    faults = [
        asyncio.create_task(at(run, total * 0.25, redis_fault)),
        asyncio.create_task(at(run, total * 0.45, disconnect_burst)),
        asyncio.create_task(at(run, total * 0.65, overload_burst)),
    ]
    await asyncio.sleep(total)
    stop_load.set()
    # Clients finish the request in flight (bounded by the client timeout): nothing abandoned.
    await asyncio.gather(*clients, *faults)
    drained_at = run.now()
    await asyncio.sleep(a.sample_s)
    stop_bg.set()
    await asyncio.gather(*bg)
    return {"traffic_s": round(total, 1), "drained_after_s": round(drained_at - total, 1)}


def settled(run: Run) -> list[dict[str, Any]]:
    """The samples with one version loaded: from a reload's start until the old version is
    retired the gateway holds both (about 120 MiB more, and the engines twice over), which
    is no leak; what a leak is shows in what stays once the old one is gone. So: outside
    every reload call (the new version's tokenizers come before its engine processes), and
    with the fewest engine cores (the old ones run until their in-flight work is done)."""
    calm = [
        s for s in run.samples if not any(start <= s["t"] <= end for start, end, *_ in run.reloads)
    ]
    counts = [s["engine_procs"] for s in calm if s.get("engine_procs")]
    if not counts:
        return calm
    one = min(counts)
    return [s for s in calm if s.get("engine_procs") == one]


def settled_before_reloads(run: Run, key: str) -> list[float]:
    """`key` in the last settled sample before each reload and at the end: the steps a leak
    per reload would climb."""
    calm = settled(run)
    marks = [start for start, _, _, _ in run.reloads] + [float("inf")]
    out = []
    for mark in marks:
        before = [s[key] for s in calm if s["t"] < mark and s.get(key)]
        if before:
            out.append(before[-1])
    return out


def serving_slope_mib_per_h(run: Run, key: str) -> float | None:
    """Growth while serving, MiB per hour: the least-squares slope of the settled samples of
    the run's second half within each stretch between reloads (a separate intercept per
    stretch, so a reload's step does not count here; reload_steps has those)."""
    if not run.samples:
        return None
    half = max(s["t"] for s in run.samples) / 2.0
    starts = [start for start, _, _, _ in run.reloads]
    groups: dict[int, list[tuple[float, float]]] = {}
    for s in settled(run):
        if s["t"] >= half and s.get(key):
            groups.setdefault(sum(s["t"] >= x for x in starts), []).append((s["t"], s[key]))
    num = var = 0.0
    for pts in groups.values():
        mt = sum(t for t, _ in pts) / len(pts)
        mv = sum(v for _, v in pts) / len(pts)
        num += sum((t - mt) * (v - mv) for t, v in pts)
        var += sum((t - mt) ** 2 for t, _ in pts)
    return round(num / var * 3600.0, 1) if var > 0 else None


def reload_steps(levels: list[float]) -> list[float]:
    """What each reload left behind: the settled level after it minus the one before it."""
    return [round(b - a, 1) for a, b in itertools.pairwise(levels)]


def stale(run: Run, r: Req) -> bool:
    """Its version was not current when it started (both count during a reload call)."""
    if r.version is None:
        return False
    current = {run.initial}
    for start, end, old, new in run.reloads:
        if r.start >= end:
            current = {new}
        elif r.start >= start:
            current = {old, new}
    return r.version not in current


def summarise(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    reqs = run.reqs
    by_phase: dict[str, dict[str, Any]] = {}
    for name in sorted({r.phase for r in reqs}):
        rs = [r for r in reqs if r.phase == name and not r.fault]
        ok = [r.seconds for r in rs if r.status == 200]
        by_phase[name] = {
            "requests": len(rs),
            "status": dict(Counter(str(r.status) for r in rs)),
            "p50_s": percentile(ok, 50),
            "p99_s": percentile(ok, 99),
        }
    steady = [r for r in reqs if not r.fault]
    faults = [r for r in reqs if r.fault]
    errors_5xx = [r for r in steady if r.status is not None and r.status >= 500]
    n_stale = sum(stale(run, r) for r in steady)
    depth_end = next(
        (s["queue_depth"] for s in reversed(run.samples) if s["queue_depth"] is not None), None
    )
    gw_slope = serving_slope_mib_per_h(run, "gateway_rss_mib")
    gw_levels = settled_before_reloads(run, "gateway_rss_mib")
    gw_steps = reload_steps(gw_levels)
    out = {
        "requests_sent": len(reqs),
        "answered_by_status": dict(Counter(str(r.status) for r in reqs if r.status is not None)),
        "steady_requests": len(steady),
        "steady_by_kind": dict(Counter(r.kind for r in steady)),
        "steady_items_scored": sum(
            (1 if r.kind == "single" else run.args.batch_items) for r in steady if r.status == 200
        ),
        "fault_requests": dict(Counter(f"{r.kind}:{r.status}" for r in faults)),
        "server_errors_5xx": len(errors_5xx),
        "lost": sum(r.lost for r in steady),
        "stale_version": n_stale,
        "reloads": [
            {"start_s": round(s, 1), "seconds": round(e - s, 1), "to": n[-12:]}
            for s, e, _, n in run.reloads
        ],
        "queue_depth_end": depth_end,
        "queue_depth_max": max((s["queue_depth"] or 0 for s in run.samples), default=None),
        "gateway_rss_slope_mib_per_h": gw_slope,
        "total_rss_slope_mib_per_h": serving_slope_mib_per_h(run, "total_rss_mib"),
        "gateway_rss_settled_mib": gw_levels,
        "gateway_rss_reload_steps_mib": gw_steps,
        "total_rss_settled_mib": settled_before_reloads(run, "total_rss_mib"),
        "per_phase": by_phase,
        **extra,
    }
    problems = []
    if out["server_errors_5xx"]:
        problems.append(f"{out['server_errors_5xx']} 5xx outside the faults' own requests")
    if out["lost"]:
        problems.append(f"{out['lost']} requests lost")
    if n_stale:
        problems.append(f"{n_stale} results of a version not current at their start")
    if depth_end not in (0, 0.0):
        problems.append(f"queue depth {depth_end} at the end")
    if gw_slope is not None and gw_slope > run.args.max_leak_mib_h:
        problems.append(f"gateway RSS grows {gw_slope} MiB/h while serving")
    if gw_steps and gw_steps[-1] > run.args.max_reload_step_mib:
        problems.append(f"the last reload left {gw_steps[-1]} MiB in the gateway")
    if len(run.reloads) and any(old == new for _, _, old, new in run.reloads):
        problems.append("a reload failed")
    out["problems"] = problems
    out["passed"] = not problems
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"Soak, {report['args']['minutes']} min of traffic on {report['machine']}, "
        f"{report['date']}: {s['requests_sent']} requests sent, answered by status "
        f"{s['answered_by_status']}; 5xx outside the faults {s['server_errors_5xx']}, lost "
        f"{s['lost']}, stale versions {s['stale_version']}; queue depth at the end "
        f"{s['queue_depth_end']}; RSS growth while serving (second half, one version "
        f"loaded, between reloads): gateway {s['gateway_rss_slope_mib_per_h']} MiB/h, "
        f"gateway with engines {s['total_rss_slope_mib_per_h']} MiB/h; gateway RSS before "
        f"each reload and at the end {s['gateway_rss_settled_mib']} MiB (left by each reload: "
        f"{s['gateway_rss_reload_steps_mib']} MiB), with engines "
        f"{s['total_rss_settled_mib']} MiB. Passed: {s['passed']}.",
        "",
        "| phase | requests | status | p50 s | p99 s |",
        "|---|---:|---|---:|---:|",
    ]
    for name, p in s["per_phase"].items():
        lines.append(f"| {name} | {p['requests']} | {p['status']} | {p['p50_s']} | {p['p99_s']} |")
    lines += ["", f"Fault requests by kind and status: {s['fault_requests']}."]
    lines += [f"Reloads: {s['reloads']}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint-root", type=Path, default=Path("checkpoints"))
    p.add_argument("--out", type=Path, default=Path("bench-results/soak.json"))
    p.add_argument("--minutes", type=float, default=22.0)
    p.add_argument("--warmup-s", type=float, default=120.0)
    p.add_argument("--single-users", type=int, default=6)
    p.add_argument("--batch-users", type=int, default=1)
    p.add_argument("--batch-items", type=int, default=16)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--critique-tokens", type=int, default=32)
    p.add_argument("--reload-every-s", type=float, default=240.0)
    p.add_argument("--redis-down-s", type=float, default=60.0)
    p.add_argument("--disconnects", type=int, default=16)
    p.add_argument("--overload-requests", type=int, default=40)
    p.add_argument("--max-queue-items", type=int, default=512)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--client-timeout-s", type=float, default=600.0)
    p.add_argument("--max-leak-mib-h", type=float, default=100.0)
    # A retired version's whole front end (tokenizers, engine clients) is about 125 MiB: one
    # kept per reload shows as a step that does not shrink.
    p.add_argument("--max-reload-step-mib", type=float, default=32.0)
    p.add_argument("--start-timeout-s", type=float, default=900.0)
    p.add_argument("--machine", default=cpu_model())
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "tool": "loadtests.soak",
        "machine": args.machine,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with contextlib.ExitStack() as stack:
        logs = args.out.parent / f"{args.out.stem}-logs"
        queue_env = {"CRM_MAX_QUEUE_ITEMS": str(args.max_queue_items)}
        try:
            d = deploy(args.checkpoint_root, stack, logs, "crm-soak", queue_env)
            v1 = d.base.manifest.model_version
            v2 = publish_head_variant(d.root, d.base, seed=3)
            t = time.monotonic()
            d.gateway.start()
            served = d.gateway.wait_ready(args.start_timeout_s)
        except SetupError as exc:
            print(f"set-up failed: {exc}")
            return 2
        gateway, redis, key, admin_key = d.gateway, d.redis_server, d.key, d.admin_key
        report["ready_after_s"] = round(time.monotonic() - t, 1)
        run = Run(args, gateway, redis, key, admin_key, (v1, v2), current=served, initial=served)
        print(
            f"gateway ready in {report['ready_after_s']} s serving {served}; traffic starts",
            flush=True,
        )
        extra = asyncio.run(traffic(run))
        report["summary"] = summarise(run, extra)
        report["samples"] = run.samples
        report["requests"] = [vars(r) for r in run.reqs]
        stop_t = time.monotonic()
        gateway.stop()
        report["summary"]["stopped_in_s"] = round(time.monotonic() - stop_t, 1)
        report["summary"]["exit_code"] = gateway.proc.returncode if gateway.proc else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0 if report["summary"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
