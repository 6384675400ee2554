"""/compare accuracy against the labels, beside the reward head's pairwise accuracy.

    python -m loadtests.bench_compare --url http://127.0.0.1:8000 --per-category 10

For each test pair of the default recipe's split (the pairs the default checkpoint was not
trained on), /compare judges [chosen, rejected]; the label says the chosen one is better.
Accuracy counts a tie as half right. Reported side by side, in the same run:
- the served verdict (both orders judged, a tie when they disagree): "with the position swap";
- each order alone ("without the swap": chosen shown first, or rejected shown first), and their
  mean, what a judge that shows one random order scores; the gap between the two orders is
  the judge's position bias;
- the reward head's Bradley-Terry preference sigmoid(r_chosen - r_rejected) > 0.5 at m = 0.
Each with a 95% Wilson interval, per category too. Writes JSON and a markdown table to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from loadtests.bench_refine import common_arguments, test_split, wilson

POINTS = {"A": 1.0, "tie": 0.5, "B": 0.0}  # response A is the chosen one


async def run_all(args: argparse.Namespace, pairs: list[Any]) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(args.concurrency)
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=args.url, timeout=3600) as client:

        async def one(pair: Any) -> None:
            body = {
                "prompt": pair.prompt,
                "responses": [pair.chosen, pair.rejected],
                "num_criteria": args.num_criteria,
                "samples": args.samples,
                "max_rubric_tokens": args.rubric_tokens,
                "score_reading": args.score_reading,
            }
            async with sem:
                t0 = time.perf_counter()
                r = await client.post("/compare", json=body, headers={"X-Request-Timeout": "3600"})
                elapsed = time.perf_counter() - t0
            r.raise_for_status()
            p = r.json()["pairs"][0]
            bt = p["bt_p_a"]
            rows.append({
                "id": pair.id,
                "category": pair.category,
                "seconds": elapsed,
                "swap": POINTS[p["preference"]],
                "chosen_first": POINTS[p["by_order"].get("AB", "tie")],
                "rejected_first": POINTS[p["by_order"].get("BA", "tie")],
                "position_disagreement": p["position_disagreement"],
                "reward_head": 1.0 if bt > 0.5 else 0.5 if bt == 0.5 else 0.0,
                "p_a": p["p_a"],
                "bt_p_a": bt,
            })  # fmt: skip
            print(f"{len(rows)}/{len(pairs)} {pair.category:<12} {elapsed:6.1f}s "
                  f"{p['preference']} bt {bt:.2f}", flush=True)  # fmt: skip

        await asyncio.gather(*(one(p) for p in pairs))
    return rows


def accuracy(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    n = len(rows)
    points = sum(r[key] for r in rows)
    # The interval counts half-points as they come (ties), rounded to whole pairs.
    lo, hi = wilson(round(points), n)
    return {"accuracy": points / n if n else float("nan"), "ci95": [lo, hi], "n": n}


COLUMNS = [
    ("swap", "/compare, both orders (served)"),
    ("chosen_first", "/compare, chosen shown first only"),
    ("rejected_first", "/compare, rejected shown first only"),
    ("reward_head", "reward head, sigmoid(r_A - r_B) at m = 0"),
]


def main() -> None:
    ap = common_arguments(__doc__ or "", 10, "reasoning,code,instruction,safety")
    ap.add_argument("--num-criteria", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--rubric-tokens", type=int, default=48)
    ap.add_argument(
        "--score-reading",
        choices=["expected", "greedy"],
        default="expected",
        help="How /compare reads a 1-5 score (results before 2026-12-07 are greedy).",
    )
    args = ap.parse_args()
    pairs = test_split(args.per_category, args.categories.split(","))
    t0 = time.perf_counter()
    rows = asyncio.run(run_all(args, pairs))
    wall = time.perf_counter() - t0
    cats = sorted({r["category"] for r in rows})
    table = {
        key: {
            "all": accuracy(rows, key),
            **{c: accuracy([r for r in rows if r["category"] == c], key) for c in cats},
        }
        for key, _ in COLUMNS
    }
    disagree = sum(r["position_disagreement"] for r in rows) / max(len(rows), 1)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    meta = {
        "date": date,
        "machine": args.machine,
        "pairs": len(rows),
        "num_criteria": args.num_criteria,
        "samples": args.samples,
        "rubric_tokens": args.rubric_tokens,
        "score_reading": args.score_reading,
        "wall_s": wall,
        "median_compare_s": statistics.median(r["seconds"] for r in rows),
        "position_disagreement_rate": disagree,
    }
    lines = [
        f"# /compare accuracy on the synthetic test split, {date}, {args.machine}",
        "",
        f"{len(rows)} labelled test pairs, {args.num_criteria} generated criteria, "
        f"{args.samples} trajectory per order, {args.rubric_tokens}-token rubrics; ties count "
        f"0.5. Position disagreement (the two orders' verdicts differ): {disagree:.3f}. Wall "
        f"{wall:.0f} s, median {meta['median_compare_s']:.1f} s per /compare.",
        "",
        "| judge | all [95% CI] | " + " | ".join(cats) + " |",
        "| --- | --- | " + " | ".join("---" for _ in cats) + " |",
    ]
    for key, label in COLUMNS:
        a = table[key]["all"]
        cells = " | ".join(f"{table[key][c]['accuracy']:.3f}" for c in cats)
        lines.append(
            f"| {label} | {a['accuracy']:.3f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}] | {cells} |"
        )
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"compare-{date}"
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "table": table, "rows": rows}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
