"""Path d, the engine-only ceiling: critic-rm's own vLLM engines called in-process with the whole
workload at once (all critique requests, then all scoring requests), no HTTP, no batcher."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from loadtests.bench.measure import Meter, PathRun
from loadtests.bench.workload import Workload
from service.engines.base import EngineStats, SamplingSpec
from service.model.runtime import ModelRuntime, load_runtime
from service.settings import Settings


async def _workload(
    rt: ModelRuntime, w: Workload, m: int
) -> tuple[list[dict[str, Any]], dict[str, float], EngineStats]:
    fmt = rt.formatter
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    encoded = [fmt.encode_item(p.prompt, p.response, w.max_tokens, m) for p in w.pairs]
    stages["tokenize"] = time.perf_counter() - t0
    stats = EngineStats()
    critiques: list[list[Any]] = [[] for _ in encoded]
    if m > 0:
        spec = SamplingSpec(n=m, temperature=w.temperature, top_p=w.top_p, max_tokens=w.max_tokens)
        t0 = time.perf_counter()
        critiques, gstats = await rt.generator.generate(
            [e.critique_prompt for e in encoded], [spec] * len(encoded)
        )
        stages["generate"] = time.perf_counter() - t0
        stats.prompt_tokens += gstats.prompt_tokens
        stats.cached_prompt_tokens += gstats.cached_prompt_tokens
    t0 = time.perf_counter()
    # As the batch runner does: a critique the fused layout read the reward of is not scored.
    sequences: list[list[int]] = []
    for e, crits in zip(encoded, critiques, strict=True):
        if crits:
            sequences += [fmt.critique_score_ids(e, c.text) for c in crits if c.reward is None]
        else:
            sequences.append(fmt.critique_score_ids(e, None))
    stages["score_inputs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored: list[float] = []
    if sequences:
        scored, sstats = await rt.scorer.score(sequences)
        stats.prompt_tokens += sstats.prompt_tokens
        stats.cached_prompt_tokens += sstats.cached_prompt_tokens
    stages["score"] = time.perf_counter() - t0
    fresh = iter(scored)
    results: list[dict[str, Any]] = []
    for crits in critiques:
        mine = [next(fresh) if c.reward is None else c.reward for c in crits] or [next(fresh)]
        results.append(
            {
                "reward": statistics.fmean(mine),
                "critique_rewards": mine if crits else [],
                "critiques": [c.text for c in crits],
                # The ids a fused reward was read after: the reference check scores exactly these.
                "critique_ids": [list(c.token_ids) if c.token_ids else None for c in crits],
            }
        )
    return results, stages, stats


def engine_rss_gib() -> float:
    """Resident memory of this process and its children (the engine cores), GiB."""
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / (1 << 30)


def run(
    checkpoint_root: Path,
    w: Workload,
    warm: Workload,
    ms: list[int],
    layout: str = "two",
    scorer_dtype: str | None = None,
) -> list[tuple[PathRun, list[dict[str, Any]]]]:
    """One run per m in `ms`, on the engines of one layout (started once; the start is timed
    and reported, not counted in the runs), the scorer in `scorer_dtype` if given."""
    name = layout if scorer_dtype is None else f"{layout}:{scorer_dtype}"
    tag = "" if name == "two" else f"[{name}]"
    settings = Settings(checkpoint_root=checkpoint_root, engine_layout=layout)
    if scorer_dtype is not None:
        settings = settings.model_copy(update={"scorer_dtype": scorer_dtype})

    async def main() -> list[tuple[PathRun, list[dict[str, Any]]]]:
        t0 = time.perf_counter()
        rt = await load_runtime(settings)
        start_s = time.perf_counter() - t0
        try:
            await _workload(rt, warm, warm.m)
            notes = [
                f"engine start {start_s:.1f} s",
                f"RSS with engines {engine_rss_gib():.2f} GiB",
            ]
            out = []
            for m in ms:
                with Meter() as meter:
                    results, stages, stats = await _workload(rt, w, m)
                out.append(
                    (
                        PathRun(
                            path=("d:engine-only" if m > 0 else "e:engine-only-m0") + tag,
                            label=f"vLLM engines ({name}) in-process, whole workload at once, "
                            f"m={m}",
                            pairs=w.n,
                            wall_s=meter.wall_s,
                            cpu_s=meter.cpu_s,
                            latencies_s=[meter.wall_s],
                            prompt_tokens=stats.prompt_tokens,
                            computed_tokens=stats.prompt_tokens - stats.cached_prompt_tokens,
                            rewards=[r["reward"] for r in results],
                            breakdown_s=stages,
                            notes=notes,
                            float32=settings.scorer_dtype == "float32",
                        ),
                        results,
                    )
                )
            return out
        finally:
            await asyncio.to_thread(rt.shutdown)

    return asyncio.run(main())
