"""Which dtype the critique generator runs in when the setting says `auto`.

bfloat16 halves memory traffic where the hardware computes it natively: on GPUs, and on CPUs
with AVX512-BF16 or AMX-BF16. On other CPUs (AVX2-only, say) bf16 matmuls are emulated, and on
this project's AVX2 machine the generator ran 3.3× slower in bf16 than in float32 (engine-only,
16 pairs, m = 4, 64 critique tokens: 0.109 vs 0.360 pairs/s)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from service.engines.config import EngineConfig

NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=4)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU listed (empty when unknown); read once per file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_generator_dtype(requested: str, on_cpu: bool, flags: frozenset[str]) -> str:
    """`auto` -> bfloat16 on GPUs and native-bf16 CPUs, float32 on other CPUs; any other value
    is passed to vLLM as given."""
    if requested != "auto":
        return requested
    if not on_cpu or flags & NATIVE_BF16_CPU_FLAGS:
        return "bfloat16"
    return "float32"


@functools.cache
def cuda_available() -> bool:
    """Whether a CUDA device is there; asked once per process (it imports torch)."""
    import torch

    return bool(torch.cuda.is_available())


def generator_dtype(config: EngineConfig) -> str:
    """The generator's dtype for this machine, with `auto` resolved; the one-engine layout's
    generator is the scorer, in the scorer's dtype."""
    if config.engine_layout in ("one", "fused"):
        return config.scorer_dtype
    return resolve_generator_dtype(config.generator_dtype, not cuda_available(), cpu_flags())


def resolve_layout(
    requested: str,
    generator_dtype: str,
    scorer_dtype: str,
    scorer_backend: str,
    on_cpu: bool,
    flags: frozenset[str],
) -> Literal["two", "one", "fused"]:
    """`auto` -> the faster layout whose rewards equal the reference, by what was measured
    (docs/performance.md, "Engine layouts"): `one` where the generator would run in the
    scorer's dtype anyway (a CPU without native bf16: 1.06x the pairs/s of two, half the
    memory and start-up), `two` where critiques can run in bfloat16 beside float32 rewards
    (one engine in float32 made 0.85x of two's pairs/s on an AVX512-BF16 EPYC; in bfloat16 its
    rewards drift from the reference). The torch reference scorer needs `two`."""
    if requested == "one":
        return "one"
    if requested == "fused":
        return "fused"
    if requested == "two":
        return "two"
    if scorer_backend != "vllm":
        return "two"
    same = resolve_generator_dtype(generator_dtype, on_cpu, flags) == scorer_dtype
    return "one" if same else "two"
