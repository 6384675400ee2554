"""Headless load run against a critic-rm service: RLHF-rollout-shaped traffic from
loadtests/locustfile.py for a fixed time, then throughput, latency percentiles and error counts,
printed and written as JSON.

    .venv-tools/bin/python loadtests/run.py --host http://127.0.0.1:8000 --run-time 60 \
        --single-users 128 --batch-users 2 --json bench-results/load.json

Exit status: 0 when every request succeeded or was shed with 429 (backpressure is an expected
answer under overload); 1 when any other error occurred (5xx, other 4xx, timeouts, connection
errors, malformed responses); 2 on bad arguments; 3 when no request succeeded at all.

locust lives in the tools virtualenv (`make tools`), not in the service's .venv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.log import setup_logging

HERE = Path(__file__).resolve().parent
THROTTLED = 429


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="http://127.0.0.1:8000", help="service base URL")
    p.add_argument("--run-time", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument(
        "--single-users", type=int, default=128, help="concurrent single-item rollout workers"
    )
    p.add_argument(
        "--batch-users", type=int, default=2, help="concurrent batch scorers (64-512 items)"
    )
    p.add_argument("--spawn-rate", type=float, default=0.0, help="users/s (default: all at once)")
    p.add_argument("--batch-min", type=int, default=64, help="min items per batch request")
    p.add_argument("--batch-max", type=int, default=512, help="max items per batch request")
    p.add_argument("--group-size", type=int, default=8, help="responses per prompt in a batch")
    p.add_argument("--num-critiques", type=int, help="m per item (default: the server's)")
    p.add_argument("--max-critique-tokens", type=int, help="critique cap (default: the server's)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    p.add_argument("--seed", type=int, help="RNG seed for the generated items")
    p.add_argument("--json", type=Path, help="write the report here as JSON")
    p.add_argument("--log-level", default="WARNING", help="locust log level")
    args = p.parse_args(argv)
    if args.run_time <= 0:
        p.error("--run-time must be > 0")
    if args.single_users < 0 or args.batch_users < 0 or args.single_users + args.batch_users == 0:
        p.error("need at least one user (--single-users / --batch-users)")
    if not 1 <= args.batch_min <= args.batch_max:
        p.error("need 1 <= --batch-min <= --batch-max")
    return args


def configure_locustfile(args: argparse.Namespace) -> Any:
    """Import loadtests/locustfile.py with its knobs set from our flags."""
    knobs = {
        "CRM_LOAD_BATCH_MIN": args.batch_min,
        "CRM_LOAD_BATCH_MAX": args.batch_max,
        "CRM_LOAD_GROUP_SIZE": args.group_size,
        "CRM_LOAD_NUM_CRITIQUES": args.num_critiques,
        "CRM_LOAD_MAX_CRITIQUE_TOKENS": args.max_critique_tokens,
        "CRM_LOAD_TIMEOUT_S": args.timeout,
        "CRM_LOAD_SEED": args.seed,
    }
    for key, value in knobs.items():
        if value is not None:
            os.environ[key] = str(value)
    sys.path.insert(0, str(HERE))
    import locustfile

    return locustfile


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(math.ceil(q / 100.0 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


class Recorder:
    """Every request's outcome, from locust's request event: exact latencies, status counts."""

    def __init__(self) -> None:
        self.latencies_ms: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.items_ok = 0
        self.error_samples: Counter[str] = Counter()
        self.first: float | None = None
        self.last: float | None = None

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        response: Any = None,
        context: dict[str, Any] | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        now = time.monotonic()
        self.first = now if self.first is None else self.first
        self.last = now
        status = int(getattr(response, "status_code", 0) or 0)
        if exception is None and 200 <= status < 300:
            outcome = "ok"
            self.latencies_ms[name].append(float(response_time))
            self.items_ok += int((context or {}).get("items", 0))
        elif status == THROTTLED:
            outcome = "throttled"
        else:
            outcome = "error"
            self.error_samples[f"{name}: {status or 'no response'}: {exception}"[:300]] += 1
        self.statuses[name][outcome] += 1
        self.statuses[name][f"status_{status or 'none'}"] += 1


def latency_summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "mean": (sum(ordered) / len(ordered)) if ordered else None,
        "max": ordered[-1] if ordered else None,
    }


def build_report(args: argparse.Namespace, rec: Recorder, elapsed_s: float) -> dict[str, Any]:
    by_name: dict[str, Any] = {}
    totals: Counter[str] = Counter()
    all_latencies: list[float] = []
    for name in sorted(rec.statuses):
        counts = rec.statuses[name]
        totals.update(counts)
        all_latencies += rec.latencies_ms[name]
        requests = counts["ok"] + counts["throttled"] + counts["error"]
        by_name[name] = {
            "requests": requests,
            "ok": counts["ok"],
            "throttled": counts["throttled"],
            "errors": counts["error"],
            "requests_per_s": requests / elapsed_s,
            "latency_ms": latency_summary(rec.latencies_ms[name]),
        }
    requests = totals["ok"] + totals["throttled"] + totals["error"]
    statuses = {
        k.removeprefix("status_"): v for k, v in sorted(totals.items()) if k.startswith("status_")
    }
    return {
        "host": args.host,
        "run_time_s": round(elapsed_s, 3),
        "users": {"single": args.single_users, "batch": args.batch_users},
        "requests": requests,
        "ok": totals["ok"],
        "throttled": totals["throttled"],
        "errors": totals["error"],
        "status_counts": statuses,
        "error_samples": dict(rec.error_samples.most_common(10)),
        "throughput": {
            "requests_per_s": requests / elapsed_s,
            "ok_requests_per_s": totals["ok"] / elapsed_s,
            "items_per_s": rec.items_ok / elapsed_s,
        },
        "latency_ms": latency_summary(all_latencies),
        "by_name": by_name,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(report: dict[str, Any]) -> None:
    t = report["throughput"]
    print(
        f"critic-rm load: {report['host']} for {report['run_time_s']:.1f}s, "
        f"{report['users']['single']} single-item + {report['users']['batch']} batch users"
    )
    header = f"{'request':<18} {'reqs':>7} {'ok':>7} {'429':>6} {'errors':>7} {'req/s':>8} "
    header += f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    print(header)
    rows = [
        *report["by_name"].items(),
        ("total", {**report, "requests_per_s": t["requests_per_s"]}),
    ]
    for name, row in rows:
        lat = row["latency_ms"]
        print(
            f"{name:<18} {row['requests']:>7} {row['ok']:>7} {row['throttled']:>6} "
            f"{row['errors']:>7} {row['requests_per_s']:>8.1f} "
            f"{_fmt(lat['p50']):>8} {_fmt(lat['p95']):>8} {_fmt(lat['p99']):>8}"
        )
    print(
        f"throughput: {t['items_per_s']:.1f} items/s scored, {t['ok_requests_per_s']:.1f} ok req/s"
    )
    print(f"status codes: {report['status_counts']}")
    for sample, n in report["error_samples"].items():
        print(f"  error x{n}: {sample}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_logging(args.log_level)
    lf = configure_locustfile(args)
    lf.RolloutUser.fixed_count = args.single_users
    lf.BatchUser.fixed_count = args.batch_users
    user_classes = [
        cls
        for cls, n in ((lf.RolloutUser, args.single_users), (lf.BatchUser, args.batch_users))
        if n > 0
    ]
    env = Environment(user_classes=user_classes, host=args.host, events=events)
    rec = Recorder()
    env.events.request.add_listener(rec.on_request)
    runner = env.create_local_runner()
    users = args.single_users + args.batch_users
    start = time.monotonic()
    runner.start(users, spawn_rate=args.spawn_rate or users)
    gevent.spawn_later(args.run_time, runner.quit)
    runner.greenlet.join()
    elapsed = max(time.monotonic() - start, 1e-9)
    return build_report(args, rec, elapsed)


def exit_code(report: dict[str, Any]) -> int:
    if report["errors"]:
        return 1
    if not report["ok"]:
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    code = exit_code(report)
    if code == 1:
        print(f"FAILED: {report['errors']} request(s) failed with errors other than 429")
    elif code == 3:
        print("FAILED: no request succeeded")
    return code


if __name__ == "__main__":
    sys.exit(main())
