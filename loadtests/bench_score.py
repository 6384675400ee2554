"""Throughput of a running critic-rm for one workload, batched vs. single-item requests and
m critiques vs. the standard-RM path (m = 0), measured side by side in one run.

    python loadtests/bench_score.py --url http://127.0.0.1:8000 --pairs 64 --m 4 --tokens 64

Prints a table and writes JSON (--out). Every request sets use_cache=false, so the engines do
all the work each time. Run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

TOPICS = [
    "photosynthesis",
    "binary search",
    "the French revolution",
    "compound interest",
    "plate tectonics",
    "TCP handshakes",
    "vaccines",
    "recursion",
]


def make_pairs(n: int) -> list[dict[str, str]]:
    """Deterministic (prompt, response) pairs of roughly 200 tokens together."""
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = (
            f"Question {i}: Explain {topic} to a first-year student in a short paragraph. "
            "Give one concrete example, name one common misconception, and keep the "
            "explanation accurate and simple."
        )
        response = (
            f"{topic.capitalize()} is easiest to see through an example. "
            * 2
            + f"Case {i}: a student applies the idea step by step and checks the result. "
            "A common misconception is that it works the same way in every situation, "
            "but the details depend on the conditions. In short, the core idea is simple, "
            "and practice with small examples makes it stick."
        )
        pairs.append({"prompt": prompt, "response": response})
    return pairs


async def run_batched(
    c: httpx.AsyncClient, pairs: list[dict[str, str]], m: int, tokens: int
) -> float:
    t0 = time.perf_counter()
    r = await c.post(
        "/score",
        json={
            "items": pairs,
            "num_critiques": m,
            "max_critique_tokens": tokens,
            "use_cache": False,
        },
    )
    r.raise_for_status()
    return time.perf_counter() - t0


async def run_single(
    c: httpx.AsyncClient, pairs: list[dict[str, str]], m: int, tokens: int
) -> float:
    async def one(p: dict[str, str]) -> None:
        r = await c.post(
            "/score",
            json={
                "items": [p],
                "num_critiques": m,
                "max_critique_tokens": tokens,
                "use_cache": False,
            },
        )
        r.raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in pairs))
    return time.perf_counter() - t0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pairs = make_pairs(args.pairs)
    cases = [
        (f"batched /score, m={args.m}", run_batched, args.m),
        (f"{args.pairs} concurrent single-item, m={args.m}", run_single, args.m),
        ("batched /score, m=0 (standard RM)", run_batched, 0),
    ]
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=args.pairs + 4)
    async with httpx.AsyncClient(base_url=args.url, timeout=3600, limits=limits) as c:
        info = (await c.get("/info")).json()
        await run_batched(c, pairs[:2], 1, 4)  # touch both engines once
        for name, fn, m in cases:
            times = [await fn(c, pairs, m, args.tokens) for _ in range(args.repeats)]
            med = statistics.median(times)
            results[name] = {"seconds": times, "median_s": med, "pairs_per_s": args.pairs / med}
    base = results[cases[0][0]]["pairs_per_s"]
    print(f"\n{'workload':<42} {'median s':>9} {'pairs/s':>8} {'x batched m':>12}")
    for name, r in results.items():
        print(
            f"{name:<42} {r['median_s']:9.2f} {r['pairs_per_s']:8.3f} {r['pairs_per_s'] / base:12.2f}"
        )
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "model_version": info.get("model_version"),
        "engines": info.get("engines"),
        "workload": {
            "pairs": args.pairs,
            "m": args.m,
            "max_critique_tokens": args.tokens,
            "repeats": args.repeats,
        },
        "results": results,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-results/score.json"))
    ns = ap.parse_args()
    report = asyncio.run(main(ns))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {ns.out}")
