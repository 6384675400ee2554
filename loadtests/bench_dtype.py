"""Which dtype the one engine serves in: bfloat16 against float32 on the same token sequences.

    python -m loadtests.bench_dtype                         # every test pair, the default mix
    python -m loadtests.bench_dtype --critique-pairs 16 --throughput-pairs 32

One engine means one dtype for critiques and rewards (issue 17). The one engine is started in
each dtype in turn on the default checkpoint. Critiques for the first --critique-pairs test
pairs are sampled once, by the float32 engine, so that both dtypes score the very same token
sequences: [x; y] alone (m = 0) for every labelled test pair, and [x; y; z] for each critique.
The torch float32 scorer gives the reference. Reported per dtype: the reward drift from the
reference (max, p99, mean of |delta|), the pairwise accuracy at m = 0 and with the shared
critiques (Wilson 95% intervals), the pairs whose order differs from the reference's, and the
engine-only throughput of the standard workload (critiques sampled in that dtype, then scored).
Run it with nothing else busy on the machine; results go to --out (JSON and markdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadtests.bench.measure import Meter, percentile
from loadtests.bench.path_engine import _workload, engine_rss_gib
from loadtests.bench.workload import Workload, make_pairs
from loadtests.bench_refine import test_split, wilson
from service.engines.base import SamplingSpec
from service.model.runtime import ModelRuntime, load_runtime
from service.settings import Settings

CATEGORIES = "reasoning,code,instruction,safety"


def sequences(rt: ModelRuntime, pairs: list[Any], critiques: list[list[str]], tokens: int) -> Any:
    """Token sequences: [x; chosen] and [x; rejected] for every pair (m = 0), then [x; y; z] for
    every shared critique z (chosen's, then rejected's, for the pairs that have critiques)."""
    fmt = rt.formatter
    plain: list[list[int]] = []
    with_z: list[list[int]] = []
    for i, p in enumerate(pairs):
        for j, y in enumerate((p.chosen, p.rejected)):
            prefix = fmt.encode_item(p.prompt, y, tokens, 1, truncate_prompt=True).score_prefix
            plain.append(fmt.score_ids(prefix, None))
            if 2 * i + j < len(critiques):
                with_z += [fmt.score_ids(prefix, z) for z in critiques[2 * i + j]]
    return plain, with_z


async def sample_critiques(
    rt: ModelRuntime, pairs: list[Any], m: int, tokens: int
) -> list[list[str]]:
    fmt = rt.formatter
    prompts = [
        fmt.encode_item(p.prompt, y, tokens, m, truncate_prompt=True).critique_prompt
        for p in pairs
        for y in (p.chosen, p.rejected)
    ]
    s = rt.manifest.sampling
    spec = SamplingSpec(n=m, temperature=s.temperature, top_p=s.top_p, max_tokens=tokens)
    out, _ = await rt.generator.generate(prompts, [spec] * len(prompts))
    return [[c.text for c in cs] for cs in out]


async def one_dtype(
    args: argparse.Namespace, dtype: str, pairs: list[Any], critiques: list[list[str]]
) -> tuple[dict[str, Any], dict[str, list[float]], list[list[str]], Any]:
    settings = Settings(
        checkpoint_root=args.checkpoint_root, engine_layout="one", scorer_dtype=dtype
    )
    t0 = time.perf_counter()
    rt = await load_runtime(settings)
    start_s = time.perf_counter() - t0
    try:
        if not critiques:
            sub = pairs[: args.critique_pairs]
            critiques = await sample_critiques(rt, sub, args.m, args.tokens)
        plain, with_z = sequences(rt, pairs, critiques, args.tokens)
        rewards_plain, _ = await rt.scorer.score(plain)
        rewards_z, _ = await rt.scorer.score(with_z)
        w = Workload(make_pairs(args.throughput_pairs), args.m, args.tokens, 1.0, 1.0)
        warm = Workload(make_pairs(2), args.m, 8, 1.0, 1.0)
        await _workload(rt, warm, warm.m)
        with Meter() as meter:
            _, stages, _ = await _workload(rt, w, w.m)
        run = {
            "dtype": dtype,
            "engine_start_s": start_s,
            "rss_gib": engine_rss_gib(),
            "throughput_pairs": w.n,
            "pairs_per_s": w.n / meter.wall_s,
            "cpu_s_per_pair": meter.cpu_s / w.n,
            "wall_s": meter.wall_s,
            "breakdown_s": stages,
        }
    finally:
        await asyncio.to_thread(rt.shutdown)
    return run, {"plain": rewards_plain, "with_z": rewards_z}, critiques, (plain, with_z)


def reference(args: argparse.Namespace, seqs: list[list[int]]) -> list[float]:
    from service.checkpoint.store import CheckpointRoot
    from service.engines.torch_scorer import TorchRewardScorer

    version = CheckpointRoot(args.checkpoint_root).resolve(None, verify_hashes=False)
    ref = TorchRewardScorer.load(version.scorer_path, "float32")
    try:
        return ref.score_sync(seqs)
    finally:
        ref.shutdown()


def accuracy(chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    k = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    n = len(chosen)
    return {"pairs": n, "correct": k, "accuracy": k / n, "ci95": wilson(k, n)}


def per_pair(plain: list[float], with_z: list[float], m: int, k: int) -> dict[str, list[float]]:
    """Chosen and rejected rewards per pair at m = 0 (all pairs) and at m (the first k)."""
    means = [statistics.fmean(with_z[i * m : (i + 1) * m]) for i in range(2 * k)]
    return {
        "m0_chosen": plain[0::2],
        "m0_rejected": plain[1::2],
        "m_chosen": means[0::2],
        "m_rejected": means[1::2],
    }


def drift(got: list[float], want: list[float]) -> dict[str, float]:
    d = [abs(a - b) for a, b in zip(got, want, strict=True)]
    return {"max": max(d), "p99": percentile(d, 99), "mean": statistics.fmean(d), "n": len(d)}


def flips(a: dict[str, list[float]], b: dict[str, list[float]], key: str) -> int:
    """Pairs whose chosen-vs-rejected order differs between two sets of rewards."""
    ca, ra, cb, rb = (
        a[f"{key}_chosen"],
        a[f"{key}_rejected"],
        b[f"{key}_chosen"],
        b[f"{key}_rejected"],
    )
    return sum((x > y) != (u > v) for x, y, u, v in zip(ca, ra, cb, rb, strict=True))


def summarise(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    k, m = raw["critique_pairs"], args.m
    ref = per_pair(raw["reference"]["plain"], raw["reference"]["with_z"], m, k)
    rows = []
    for run in raw["runs"]:
        got = per_pair(raw[run["dtype"]]["plain"], raw[run["dtype"]]["with_z"], m, k)
        rows.append(
            {
                **run,
                "drift_m0": drift(raw[run["dtype"]]["plain"], raw["reference"]["plain"]),
                "drift_critique": drift(raw[run["dtype"]]["with_z"], raw["reference"]["with_z"]),
                "accuracy_m0": accuracy(got["m0_chosen"], got["m0_rejected"]),
                f"accuracy_m{m}": accuracy(got["m_chosen"], got["m_rejected"]),
                "order_flips_vs_reference_m0": flips(got, ref, "m0"),
                f"order_flips_vs_reference_m{m}": flips(got, ref, "m"),
            }
        )
    margins = sorted(abs(c - r) for c, r in zip(ref["m0_chosen"], ref["m0_rejected"], strict=True))
    return {
        # How far apart a pair's rewards are: a drift of that size can reorder the pair.
        "reference_median_abs_margin_m0": statistics.median(margins),
        "reference_accuracy_m0": accuracy(ref["m0_chosen"], ref["m0_rejected"]),
        f"reference_accuracy_m{m}": accuracy(ref["m_chosen"], ref["m_rejected"]),
        "rows": rows,
    }


def markdown(args: argparse.Namespace, summary: dict[str, Any], meta: dict[str, Any]) -> str:
    m = args.m

    def acc(a: dict[str, Any]) -> str:
        lo, hi = a["ci95"]
        return f"{a['accuracy']:.3f} [{lo:.2f}, {hi:.2f}] (n={a['pairs']})"

    lines = [
        f"# One-engine dtype: bfloat16 vs float32 rewards ({meta['date']}, {args.machine})",
        "",
        f"Same token sequences in both dtypes: {meta['pairs']} labelled test pairs at m = 0, "
        f"and {meta['critique_pairs']} pairs x 2 responses x {m} shared critiques "
        f"(sampled once, float32). Reference: torch float32. Throughput: engine-only, "
        f"{args.throughput_pairs} pairs, m = {m}, {args.tokens} critique tokens.",
        "",
        f"Reference accuracy: m = 0 {acc(summary['reference_accuracy_m0'])}; "
        f"m = {m} {acc(summary[f'reference_accuracy_m{m}'])}; median |r(chosen) - r(rejected)| "
        f"at m = 0: {summary['reference_median_abs_margin_m0']:.3f}",
        "",
        "| dtype | max abs drift m=0 | mean m=0 | max abs drift critique | mean critique "
        f"| acc m=0 | acc m={m} | order flips m=0 | order flips m={m} | pairs/s | CPU-s/pair "
        "| start s | RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['dtype']} | {r['drift_m0']['max']:.2e} | {r['drift_m0']['mean']:.2e} "
            f"| {r['drift_critique']['max']:.2e} | {r['drift_critique']['mean']:.2e} "
            f"| {acc(r['accuracy_m0'])} | {acc(r[f'accuracy_m{m}'])} "
            f"| {r['order_flips_vs_reference_m0']} | {r[f'order_flips_vs_reference_m{m}']} "
            f"| {r['pairs_per_s']:.3f} | {r['cpu_s_per_pair']:.2f} | {r['engine_start_s']:.1f} "
            f"| {r['rss_gib']:.2f} |"
        )
    return "\n".join(lines) + "\n"


async def run_all(args: argparse.Namespace, pairs: list[Any]) -> tuple[dict[str, Any], Any]:
    """Each dtype's run and rewards, and the scored sequences (the same for every dtype)."""
    raw: dict[str, Any] = {"runs": [], "critique_pairs": min(args.critique_pairs, len(pairs))}
    critiques: list[list[str]] = []
    seqs: Any = None
    for dtype in args.dtypes.split(","):  # the first dtype samples the shared critiques
        run, rewards, critiques, seqs = await one_dtype(args, dtype, pairs, critiques)
        raw["runs"].append(run)
        raw[dtype] = rewards
        print(json.dumps(run), flush=True)
    raw["critiques"] = critiques
    return raw, seqs


def main() -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--checkpoint-root", type=Path, default=Path("checkpoints"))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--per-category", type=int, default=1000, help="test pairs per category")
    ap.add_argument("--categories", default=CATEGORIES)
    ap.add_argument("--critique-pairs", type=int, default=24)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--throughput-pairs", type=int, default=64)
    ap.add_argument("--machine", default=platform.processor() or platform.machine())
    ap.add_argument("--out", type=Path, default=Path("loadtests/results"))
    ap.add_argument("--from-json", type=Path, help="re-report a saved run, without engines")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        summary = summarise(args, saved["raw"])
        text = markdown(args, summary, saved["meta"])
        saved["summary"] = summary
        args.from_json.write_text(json.dumps(saved, indent=1))
        args.from_json.with_suffix(".md").write_text(text)
        print(text)
        return 0
    pairs = test_split(args.per_category, args.categories.split(","))
    raw, (plain, with_z) = asyncio.run(run_all(args, pairs))
    raw["reference"] = {"plain": reference(args, plain), "with_z": reference(args, with_z)}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    meta = {
        "date": date,
        "machine": args.machine,
        "cpus": os.cpu_count(),
        "pairs": len(pairs),
        "critique_pairs": raw["critique_pairs"],
    }
    summary = summarise(args, raw)
    stem = args.out / f"dtype-one-{date}"
    args.out.mkdir(parents=True, exist_ok=True)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"meta": meta, "args": options, "summary": summary, "raw": raw}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = markdown(args, summary, meta)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
