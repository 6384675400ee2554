"""CTRL's test-time scaling curve on our data: /refine over the synthetic test split, verified.

    python -m loadtests.bench_refine --url http://127.0.0.1:8000          # a running gateway
    python -m loadtests.bench_refine --per-category 12 --categories reasoning,code

For each test pair of the default recipe's split (trainer/configs/default.yaml: the pairs the
default checkpoint was not trained on), both its responses (the right one and the wrong one)
start a /refine with `stop: never` and the served generator as the policy. One call of R rounds
gives the whole curve: the best response after k rounds is the best-rewarded of the original
and the revisions of rounds 1..k, what a call with `rounds: k` returns. Each is verified by the
pair's own checker (code: its unit tests in the sandboxed subprocess with time and memory
limits; reasoning: the arithmetic checker; the other categories' checks likewise), so the table
shows, per k in 0, 1, 2, 4: the fraction correct (with a 95% Wilson interval), the fraction of
wrong starts made right, the fraction of right starts made wrong, the mean reward of the best,
and the correct fraction of the latest revision alone. k = 0 is the baseline, in the same run.
Writes JSON, a markdown table and a PNG to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROUNDS = (0, 1, 2, 4)


def test_split(per_category: int, categories: list[str]) -> list[Any]:
    """The default recipe's test split, the first `per_category` pairs of each category."""
    from trainer.config import load_config
    from trainer.data import synthetic

    cfg = load_config(Path("trainer/configs/default.yaml"))
    d = cfg.data
    pairs = synthetic.generate(d.per_category, seed=cfg.seed)
    fractions = (1.0 - d.val_fraction - d.test_fraction, d.val_fraction, d.test_fraction)
    test = synthetic.split(pairs, fractions, seed=cfg.seed)[2]
    out = []
    for category in categories:
        out += [p for p in test if p.category == category and p.check][:per_category]
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def best_after(body: dict[str, Any], k: int) -> dict[str, Any]:
    """The best-rewarded of the original and the revisions of rounds 1..k (ties: the earlier)."""
    best = body["original"]
    for r in body["rounds"][:k]:
        for c in r["candidates"]:
            if c["reward"] > best["reward"]:
                best = c
    return best


def latest_after(body: dict[str, Any], k: int) -> dict[str, Any]:
    """The first revision of round k (the original at k = 0, or if round k did not run)."""
    rounds = body["rounds"]
    if k == 0 or len(rounds) < k or not rounds[k - 1]["candidates"]:
        return body["original"] if k == 0 else latest_after(body, k - 1)
    return dict(rounds[k - 1]["candidates"][0])


async def run_all(args: argparse.Namespace, pairs: list[Any]) -> list[dict[str, Any]]:
    from trainer.verify.checks import verify

    sem = asyncio.Semaphore(args.concurrency)
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=args.url, timeout=3600) as client:

        async def one(pair: Any, start: str) -> None:
            response = pair.chosen if start == "right" else pair.rejected
            body = {
                "prompt": pair.prompt,
                "response": response,
                "rounds": max(ROUNDS),
                "stop": "never",
                "num_critiques": args.m,
                "max_critique_tokens": args.critique_tokens,
                "max_revision_tokens": args.revision_tokens,
                "use_cache": False,
            }
            async with sem:
                t0 = time.perf_counter()
                # Many 4-round refines share 2 cores: each may take far longer than the
                # service's default deadline.
                r = await client.post("/refine", json=body, headers={"X-Request-Timeout": "3600"})
                elapsed = time.perf_counter() - t0
            r.raise_for_status()
            out = r.json()
            row: dict[str, Any] = {
                "id": pair.id,
                "category": pair.category,
                "start": start,
                "seconds": elapsed,
                "start_verified": verify(pair.check, response).correct,
                "model_version": out["model_version"],
            }
            for k in ROUNDS:
                best, latest = best_after(out, k), latest_after(out, k)
                row[f"best_correct_{k}"] = verify(pair.check, best["response"]).correct
                row[f"best_reward_{k}"] = best["reward"]
                row[f"latest_correct_{k}"] = verify(pair.check, latest["response"]).correct
            rows.append(row)
            print(
                f"{len(rows)}/{2 * len(pairs)} {pair.category:<12} {start:<5} {elapsed:6.1f}s "
                + " ".join(str(int(row[f"best_correct_{k}"])) for k in ROUNDS),
                flush=True,
            )

        await asyncio.gather(*(one(p, s) for p in pairs for s in ("right", "wrong")))
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for k in ROUNDS:
        n = len(rows)
        correct = sum(r[f"best_correct_{k}"] for r in rows)
        wrong = [r for r in rows if not r["start_verified"]]
        right = [r for r in rows if r["start_verified"]]
        table.append({
            "rounds": k,
            "n": n,
            "correct": correct / n,
            "correct_ci95": wilson(correct, n),
            "fixed": sum(r[f"best_correct_{k}"] for r in wrong) / max(len(wrong), 1),
            "n_wrong_starts": len(wrong),
            "broken": sum(not r[f"best_correct_{k}"] for r in right) / max(len(right), 1),
            "n_right_starts": len(right),
            "mean_best_reward": statistics.fmean(r[f"best_reward_{k}"] for r in rows),
            "latest_revision_correct": sum(r[f"latest_correct_{k}"] for r in rows) / n,
            "by_category": {
                c: sum(r[f"best_correct_{k}"] for r in rows if r["category"] == c)
                / len([r for r in rows if r["category"] == c])
                for c in sorted({r["category"] for r in rows})
            },
        })  # fmt: skip
    return table


def markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# /refine test-time scaling, {meta['date']}, {meta['machine']}",
        "",
        f"{meta['responses']} responses ({meta['pairs']} test pairs x right/wrong start), "
        f"m = {meta['m']}, {meta['critique_tokens']}-token critiques, "
        f"{meta['revision_tokens']}-token revisions, served generator as policy, "
        f"model {meta['model_version']}; wall {meta['wall_s']:.0f} s; median "
        f"{meta['median_refine_s']:.1f} s per 4-round /refine. Ratios are to k = 0 (no refine).",
        "",
        "| rounds k | correct [95% CI] | ratio to k=0 | wrong starts fixed | right starts broken "
        "| mean reward of best | latest revision correct | by category |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = table[0]["correct"] or math.nan
    for t in table:
        lo, hi = t["correct_ci95"]
        cats = ", ".join(f"{c} {v:.2f}" for c, v in t["by_category"].items())
        lines.append(
            f"| {t['rounds']} | {t['correct']:.3f} [{lo:.2f}, {hi:.2f}] | "
            f"{t['correct'] / base:.2f} | {t['fixed']:.3f} (of {t['n_wrong_starts']}) | "
            f"{t['broken']:.3f} (of {t['n_right_starts']}) | {t['mean_best_reward']:.3f} | "
            f"{t['latest_revision_correct']:.3f} | {cats} |"
        )
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [t["rounds"] for t in table]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ks, [t["correct"] for t in table], marker="o", label="best response correct")
    a.fill_between(ks, [t["correct_ci95"][0] for t in table],
                   [t["correct_ci95"][1] for t in table], alpha=0.2)  # fmt: skip
    a.plot(ks, [t["fixed"] for t in table], marker="s", label="wrong starts fixed")
    a.plot(ks, [t["latest_revision_correct"] for t in table], marker="^",
           label="latest revision correct")  # fmt: skip
    a.set_xlabel("refine rounds")
    a.set_ylabel("fraction (verified)")
    a.set_xticks(ks)
    a.legend()
    b.plot(ks, [t["mean_best_reward"] for t in table], marker="o")
    b.set_xlabel("refine rounds")
    b.set_ylabel("mean reward of the best response")
    b.set_xticks(ks)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def common_arguments(doc: str, per_category: int, categories: str) -> argparse.ArgumentParser:
    """The options both test-split benches take: the gateway, the pairs, the output."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--per-category", type=int, default=per_category)
    ap.add_argument("--categories", default=categories)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--machine", default=platform.processor() or platform.machine())
    ap.add_argument("--out", type=Path, default=Path("loadtests/results"))
    return ap


def main() -> None:
    ap = common_arguments(__doc__ or "", 12, "reasoning,code")
    ap.add_argument("--m", type=int, default=2)
    ap.add_argument("--critique-tokens", type=int, default=64)
    ap.add_argument("--revision-tokens", type=int, default=128)
    args = ap.parse_args()
    pairs = test_split(args.per_category, args.categories.split(","))
    t0 = time.perf_counter()
    rows = asyncio.run(run_all(args, pairs))
    wall = time.perf_counter() - t0
    table = summarise(rows)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    meta = {
        "date": date,
        "machine": args.machine,
        "pairs": len(pairs),
        "responses": len(rows),
        "m": args.m,
        "critique_tokens": args.critique_tokens,
        "revision_tokens": args.revision_tokens,
        "model_version": rows[0]["model_version"] if rows else None,
        "wall_s": wall,
        "median_refine_s": statistics.median(r["seconds"] for r in rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"refine-{date}"
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "table": table, "rows": rows}, indent=2) + "\n"
    )
    md = markdown(table, meta)
    stem.with_suffix(".md").write_text(md)
    plot(table, stem.with_suffix(".png"), f"/refine on the synthetic test split ({args.machine})")
    print(md)


if __name__ == "__main__":
    main()
