"""Benchmark critic-rm side by side with what users would otherwise run, in one invocation.

    python -m loadtests.bench_paths                       # the default workload, every path
    python -m loadtests.bench_paths --paths a,d --pairs 32

Paths (same checkpoint, pairs, m, critique length and sampling settings):
  a  critic-rm over HTTP: `single` (OpenRLHF-style concurrent single-item requests) and `batched`
  b  naive two-pass transformers reference (generate, then a second forward), per dtype
  c  assemble-it-yourself: two `vllm serve` processes and an async client
  d  the engine-only ceiling: critic-rm's vLLM engines in-process, whole workload at once
  a and d run once per engine layout in --layouts (two: generator + pooling scorer; one: one
  engine whose reserved token's logit is the reward; fused: that engine reading each reward
  while it generates the critique, on a format-2 copy of the checkpoint; one:bfloat16: the one
  engine in bfloat16), named e.g. d:engine-only[one]
  e  m = 0, the standard-RM path, on a, c and d; and OpenRLHF's serve_rm when --openrlhf-src is given

For each: pairs/s, p50/p99 latency, machine CPU-seconds per pair, prompt tokens submitted and
actually computed per pair (prefix-cache hits excluded), the ratio of every path to every other,
and a check that the rewards agree: m = 0 rewards across paths directly, and every m > 0 path's
per-critique rewards (on its own critiques) against the torch float32 reference scorer.
Run it with nothing else busy on the machine; results go to --out (JSON and markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadtests.bench import path_diy, path_engine, path_naive, path_service
from loadtests.bench.measure import PathRun
from loadtests.bench.report import breakdown_table, ratio_table, ratios, table
from loadtests.bench.workload import Workload, make_pairs

TIGHT = 2e-3  # float32 vLLM pooling vs torch float32 on the same tokens (measured: 4 decimals)


def reference_check(
    runs: list[tuple[PathRun, list[dict[str, Any]], Path]], w: Workload, k: int
) -> dict[str, dict[str, float]]:
    """Rescore each m > 0 path's own critiques for its first k pairs with the torch float32
    reference scorer, on the version and checkpoint format the path served (a fused reward on
    the very ids it was read after); max and mean absolute difference of the per-critique
    rewards."""
    from service.checkpoint.store import CheckpointRoot
    from service.engines.factory import load_formatter
    from service.engines.torch_scorer import TorchRewardScorer
    from service.settings import Settings

    out: dict[str, dict[str, float]] = {}
    for run, results, root in runs:
        version = CheckpointRoot(root).resolve(None, verify_hashes=False)
        fmt = load_formatter(version, Settings(checkpoint_root=root).engine_config())
        seqs: list[list[int]] = []
        got: list[float] = []
        for p, res in zip(w.pairs[:k], results[:k], strict=False):
            item = fmt.encode_item(p.prompt, p.response, w.max_tokens, w.m)
            ids = res.get("critique_ids") or [None] * len(res["critiques"])
            seqs += [
                fmt.critique_score_ids(item, z if z is not None else t)
                for t, z in zip(res["critiques"], ids, strict=True)
            ]
            got += res["critique_rewards"]
        ref = TorchRewardScorer.load(version.scorer_path, "float32")
        try:
            want = ref.score_sync(seqs)
        finally:
            ref.shutdown()
        diffs = [abs(a - b) for a, b in zip(got, want, strict=True)]
        out[run.path] = {
            "critiques_checked": len(diffs),
            "max_abs_diff": max(diffs),
            "mean_abs_diff": sum(diffs) / len(diffs),
        }
    return out


def format2_root(checkpoint_root: Path) -> Path:
    """A private root (under `checkpoint_root`, hard links) whose current version is the
    current one read as checkpoint format 2, or the current one itself where it is format 2."""
    from service.checkpoint.store import CheckpointRoot
    from service.checkpoint.variant import publish_head_variant

    base = CheckpointRoot(checkpoint_root).resolve(None, verify_hashes=False)
    root = CheckpointRoot(checkpoint_root / ".bench-roots" / uuid.uuid4().hex / "root")
    name = publish_head_variant(root, base, None, format_version=2)
    root.set_current(name)
    return root.root


def m0_check(runs: list[PathRun]) -> dict[str, float]:
    """Max absolute difference of each m = 0 path's rewards from the first one's."""
    base = runs[0].rewards
    return {r.path: max(abs(a - b) for a, b in zip(r.rewards, base, strict=True)) for r in runs}


def layout_spec(spec: str) -> tuple[str, str | None]:
    """`one` or `one:bfloat16`: an engine layout, and the scorer dtype it runs in (None: the
    setting's default; the one engine runs in the scorer dtype)."""
    layout, _, dtype = spec.partition(":")
    if layout not in ("two", "one", "fused"):
        raise SystemExit(f"--layouts: unknown engine layout {layout!r} in {spec!r}")
    return layout, dtype or None


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    paths = set(args.paths.split(","))
    w = Workload(make_pairs(args.pairs), args.m, args.tokens, args.temperature, args.top_p)
    # Every path first runs these 4 pairs untimed (engine warm-up, kernel selection).
    warm = Workload(make_pairs(4), args.m, args.tokens, args.temperature, args.top_p)
    logs = args.out / "logs"
    runs: list[PathRun] = []
    with_results: list[tuple[PathRun, list[dict[str, Any]], Path]] = []
    m0_runs: list[PathRun] = []
    # fused reads a format-2 checkpoint: a copy of the current version (same weights and head).
    fused_root = format2_root(args.checkpoint_root) if "fused" in args.layouts else None

    def root_of(spec: str) -> Path:
        return fused_root if fused_root is not None and spec == "fused" else args.checkpoint_root

    def done(run: PathRun, results: list[dict[str, Any]], root: Path | None = None) -> None:
        print(f"  {run.path:<22} {run.pairs_per_s:8.3f} pairs/s  ({run.wall_s:.1f} s)", flush=True)
        (m0_runs if run.path.startswith("e:") else runs).append(run)
        # Written after every path, so a run cut short keeps what it measured.
        args.out.mkdir(parents=True, exist_ok=True)
        partial = [r.summary() for r in runs + m0_runs]
        (args.out / "paths.partial.json").write_text(json.dumps(partial, indent=2) + "\n")
        if not run.path.startswith("e:"):
            with_results.append((run, results, root or args.checkpoint_root))

    layouts = args.layouts.split(",")
    for spec in layouts if "a" in paths else []:
        layout, dtype = layout_spec(spec)
        tag = "" if spec == "two" else f"[{spec}]"
        print(f"a: critic-rm over HTTP, engine layout {spec}", flush=True)
        env = {"CRM_ENGINE_LAYOUT": layout, **({"CRM_SCORER_DTYPE": dtype} if dtype else {})}
        root = root_of(layout)
        with path_service.critic_rm_server(root, logs, env) as url:
            path_service.run(url, warm, mode="single", concurrency=4, batch=1)
            done(
                *path_service.run(
                    url, w, mode="single", concurrency=args.concurrency, batch=1, tag=tag
                ),
                root,
            )
            done(
                *path_service.run(url, w, mode="batched", concurrency=1, batch=args.batch, tag=tag),
                root,
            )
            done(
                *path_service.run(
                    url, w, mode="batched", concurrency=1, batch=args.batch, m=0, tag=tag
                )
            )
    for spec in layouts if "d" in paths else []:
        layout, dtype = layout_spec(spec)
        print(f"d: engine-only, in-process, engine layout {spec}", flush=True)
        root = root_of(layout)
        for run, results in path_engine.run(root, w, warm, [w.m, 0], layout, scorer_dtype=dtype):
            done(run, results, root)
    if "c" in paths:
        print("c: two `vllm serve` + async client", flush=True)
        for run, results in path_diy.run(
            args.checkpoint_root, w, warm, [w.m, 0], logs, args.diy_concurrency or w.n
        ):
            done(run, results)
    if "e" in paths and args.openrlhf_src:
        print("e: OpenRLHF serve_rm", flush=True)
        from loadtests.bench import path_serve_rm

        done(
            *path_serve_rm.run(
                args.checkpoint_root,
                w,
                args.openrlhf_src,
                args.openrlhf_pythonpath,
                logs,
                args.batch,
            )
        )
    if "b" in paths:
        for dtype in args.naive_dtypes.split(","):
            print(f"b: naive transformers, {dtype}", flush=True)
            n = args.naive_pairs.get(dtype, w.n)
            sub = Workload(w.pairs[:n], w.m, w.max_tokens, w.temperature, w.top_p)
            done(*path_naive.run(args.checkpoint_root, sub, warm, dtype, args.naive_batch))

    print("reward agreement", flush=True)
    reference = reference_check(with_results, w, args.check_pairs)
    if fused_root is not None:
        shutil.rmtree(fused_root.parent, ignore_errors=True)
    m0 = m0_check(m0_runs) if m0_runs else {}
    all_runs = runs + m0_runs
    # Paths computing in bf16 are reported, not held to the float32 tolerance.
    held = {r.path for r in all_runs if r.float32}
    diffs = {p: r["max_abs_diff"] for p, r in reference.items()} | m0
    failures = [p for p, d in diffs.items() if p in held and d > TIGHT]
    md = "\n\n".join(
        [
            f"Workload: {w.n} pairs (~200 tokens prompt + response), m = {w.m}, "
            f"{w.max_tokens} critique tokens, T = {w.temperature}, top_p = {w.top_p}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{datetime.now(timezone.utc):%Y-%m-%d}.",
            table(all_runs),
            ratio_table(runs) if runs else "",
            "Where the time goes (seconds, summed over requests or batches):\n\n"
            + breakdown_table(all_runs),
            "Reward agreement: m > 0 per-critique rewards against the torch float32 reference "
            f"(first {args.check_pairs} pairs of each path); m = 0 rewards against "
            f"{m0_runs[0].path if m0_runs else '–'}.\n\n"
            + "\n".join(
                f"- {p}: max |Δ| {r['max_abs_diff']:.2e} over {r['critiques_checked']:.0f} critiques"
                for p, r in reference.items()
            )
            + "\n"
            + "\n".join(f"- {p} (m = 0): max |Δ| {d:.2e}" for p, d in m0.items()),
        ]
    )
    print("\n" + md)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "workload": {
            "pairs": w.n,
            "m": w.m,
            "max_critique_tokens": w.max_tokens,
            "temperature": w.temperature,
            "top_p": w.top_p,
        },
        "runs": [r.summary() for r in all_runs],
        "ratios": ratios(runs),
        "agreement": {"reference": reference, "m0": m0, "tolerance": TIGHT, "failures": failures},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paths.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "paths.md").write_text(md + "\n")
    print(f"\nwrote {args.out / 'paths.json'} and {args.out / 'paths.md'}")
    if failures:
        print(f"rewards disagree beyond {TIGHT}: {failures}", file=sys.stderr)
        return 1
    return 0


def _naive_pairs(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (part.split("=") for part in text.split(",") if part)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint-root", type=Path, default=Path("checkpoints"))
    ap.add_argument("--paths", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    ap.add_argument(
        "--layouts",
        default="two,one,fused",
        help="engine layouts of paths a and d (CRM_ENGINE_LAYOUT), side by side; layout:dtype "
        "sets the scorer dtype too (CRM_SCORER_DTYPE), e.g. two,one,one:bfloat16; fused runs "
        "a format-2 copy of the current version (same weights and head)",
    )
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64, help="critique tokens (max)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--concurrency", type=int, default=64, help="single-item requests in flight")
    ap.add_argument("--batch", type=int, default=64, help="items per batched /score request")
    ap.add_argument("--diy-concurrency", type=int, default=0, help="pairs in flight (0: all)")
    ap.add_argument("--naive-dtypes", default="bfloat16,float32")
    ap.add_argument(
        "--naive-pairs",
        type=_naive_pairs,
        default=_naive_pairs("bfloat16=32,float32=32"),
        help="pairs per naive dtype (others: all pairs); on AVX2-only CPUs bf16 is emulated: use bfloat16=8",
    )
    ap.add_argument("--naive-batch", type=int, default=16, help="pairs per naive batch")
    ap.add_argument("--check-pairs", type=int, default=8, help="pairs per path rescored")
    ap.add_argument("--openrlhf-src", type=Path, default=None, help="OpenRLHF source checkout")
    ap.add_argument(
        "--openrlhf-pythonpath",
        default="",
        help="extra PYTHONPATH for serve_rm's own dependencies (deepspeed, peft, flash_attn)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    return ap.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
