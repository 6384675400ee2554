"""The sample stage's engines: one generator, or `engine.data_parallel` replicas of it.

With replicas, the training pairs are dealt out (pair i to shard i mod n), each shard is
sampled by its own engine in its own process (`python -m trainer.sampling RUN_DIR K N`; on
GPUs with its own `engine.tensor_parallel_size` devices, all at once; on CPU one after another,
since every engine already uses all the cores) and written with a marker, and the shards are
merged back into pair order. A rerun samples only the shards whose marker is missing or stale,
so a run that dies in sampling resumes per shard."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainer.critiques import SampleStats
from trainer.data.load import read_json_lines, read_jsonl, write_json_lines
from trainer.data.pairs import PreferencePair
from trainer.run import Run, StageError, base_version, engine_config

SHARDS = "sample_shards"


async def sample_pairs(
    run: Run, pairs: Sequence[PreferencePair]
) -> tuple[list[dict[str, Any]], SampleStats]:
    """Critiques of `pairs` from one generator engine on the run's base version."""
    from service.engines.factory import load_formatter, load_generator
    from trainer.critiques import sample_and_judge

    engine_cfg = engine_config(run)
    version = base_version(run)
    fmt = load_formatter(version, engine_cfg)
    generator = await asyncio.to_thread(load_generator, version, engine_cfg)
    try:
        return await sample_and_judge(generator, fmt, pairs, run.cfg.sampling)
    finally:
        generator.shutdown()


def deal(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Shard k holds items k, k + n, k + 2n, ..."""
    return [list(items[k::n]) for k in range(n)]


def merge(shards: Sequence[Sequence[Any]]) -> list[Any]:
    """The inverse of deal: back into the original order, whatever order shards finished in."""
    n = len(shards)
    total = sum(len(s) for s in shards)
    return [shards[i % n][i // n] for i in range(total)]


def merge_stats(parts: Sequence[dict[str, Any]]) -> SampleStats:
    out = SampleStats()
    for p in parts:
        for key in ("critiques", "unparseable", "grounded_pairs", "hint_echoes", "teacher"):
            setattr(out, key, getattr(out, key) + int(p[key]))
        for cat, counts in p["per_category"].items():
            mine = out.per_category.setdefault(cat, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v
    return out


def _paths(run: Run, k: int, n: int) -> tuple[Path, Path]:
    base = run.path(SHARDS) / f"shard-{k}-of-{n}"
    return base.with_suffix(".jsonl"), base.with_suffix(".json")


def _done(run: Run, k: int, n: int) -> dict[str, Any] | None:
    data, marker = _paths(run, k, n)
    if not (data.is_file() and marker.is_file()):
        return None
    meta: dict[str, Any] = json.loads(marker.read_text())
    return meta if meta.get("digest") == run.digests["sample"] else None


def _devices(tp: int, replicas: int) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES for each replica, or None on CPU (replicas then run in turn)."""
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < tp * replicas:
        raise StageError(
            f"engine.data_parallel={replicas} x engine.tensor_parallel_size={tp} needs "
            f"{tp * replicas} GPUs; {len(ids)} are visible"
        )
    return [",".join(ids[k * tp : (k + 1) * tp]) for k in range(replicas)]


async def sample(run: Run) -> tuple[list[dict[str, Any]], SampleStats, dict[str, Any]]:
    """The sample stage's records and counts, from one engine or from replicas."""
    pairs = read_jsonl(run.path("train.jsonl"))
    n = run.cfg.engine.data_parallel
    if n == 1:
        records, stats = await sample_pairs(run, pairs)
        return records, stats, {"replicas": 1}
    todo = [k for k in range(n) if _done(run, k, n) is None]
    devices = _devices(run.cfg.engine.tensor_parallel_size, n)
    await asyncio.to_thread(_run_replicas, run, todo, n, devices)
    shards = [read_json_lines(_paths(run, k, n)[0]) for k in range(n)]
    metas = [_done(run, k, n) for k in range(n)]
    if any(m is None for m in metas):
        raise StageError(f"a sampling shard in {run.path(SHARDS)} wrote no marker")
    stats = merge_stats([m["stats"] for m in metas if m is not None])
    return merge(shards), stats, {"replicas": n, "resumed_shards": n - len(todo)}


def _run_replicas(run: Run, todo: list[int], n: int, devices: list[str] | None) -> None:
    run.path(SHARDS).mkdir(parents=True, exist_ok=True)
    procs = []
    for k in todo:
        env = dict(os.environ)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[k]
        log = run.path(SHARDS) / f"shard-{k}-of-{n}.log"
        cmd = [sys.executable, "-m", "trainer.sampling", str(run.dir), str(k), str(n)]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append((k, proc, log))
        if devices is None:  # CPU: one engine at a time
            proc.wait()
    failed = [
        f"shard {k} (exit {rc}, log {log})" for k, proc, log in procs if (rc := proc.wait()) != 0
    ]
    if failed:
        raise StageError("critique sampling failed: " + ", ".join(failed))


def _shard_main(run_dir: str, k: int, n: int) -> None:
    """One replica: sample shard k of n and write it with its marker."""
    from trainer.config import load_config
    from trainer.pipeline import digests

    cfg = load_config(Path(run_dir) / "config.yaml")
    run = Run(cfg, digests(cfg))
    pairs = deal(read_jsonl(run.path("train.jsonl")), n)[k]
    records, stats = asyncio.run(sample_pairs(run, pairs))
    data, marker = _paths(run, k, n)
    write_json_lines(records, data)
    body = {"digest": run.digests["sample"], "pairs": len(pairs), "stats": asdict(stats)}
    marker.write_text(json.dumps(body) + "\n")


if __name__ == "__main__":
    _shard_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
