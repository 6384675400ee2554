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
) -> tuple[Literal["two", "one", "fused"], Literal["two", "one"]]:
    """The layout, and the one a format-1 checkpoint runs on where that layout is `fused`
    (format 1 cannot be read while generating). `auto` -> the fastest layout whose rewards equal
    the reference, by what was measured (docs/performance.md, "Engine layouts"):
    - generator and scorer in one dtype (a CPU without native bf16, or both dtypes set alike):
      fused, else one (one was 1.06x the pairs/s of two on an AVX2 EPYC; fused is one without
      its scoring pass);
    - a CPU with native bf16: fused in float32 (1.19x two, whose critiques run in bfloat16, on
      an AVX512-BF16 EPYC), else two (one in float32 was 0.82x two there);
    - a GPU with the default dtypes: two, bfloat16 critiques beside float32 rewards (a float32
      engine would give up the tensor cores' bfloat16 speed).
    The torch reference scorer needs `two`."""
    if requested == "one":
        return "one", "one"
    if requested == "fused":
        return "fused", "one"
    if requested == "two" or scorer_backend != "vllm":
        return "two", "one"
    if resolve_generator_dtype(generator_dtype, on_cpu, flags) == scorer_dtype:
        return "fused", "one"
    return ("fused", "two") if on_cpu else ("two", "one")
