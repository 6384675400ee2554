"""What the engines are configured with: a small value of their own, so that engine code (and
the trainer, which loads a generator) never needs the gateway's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal


def all_cpus() -> str:
    """The cores this process may use, as vLLM's VLLM_CPU_OMP_THREADS_BIND list (e.g. "0,1")."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    return ",".join(str(c) for c in cpus)


@dataclass(frozen=True)
class EngineConfig:
    """How to start the engines of one checkpoint version (CRM_* settings document each)."""

    # two: a generator and a pooling scorer engine; one: one engine, one copy of the weights;
    # fused: that engine, reading a format-2 checkpoint's rewards while generating.
    engine_layout: Literal["two", "one", "fused"] = "two"
    # Where engine_layout is fused: the layout of a format-1 checkpoint (factory.served_layout).
    fallback_layout: Literal["two", "one"] = "one"
    scorer_backend: Literal["vllm", "torch"] = "vllm"
    generator_dtype: str = "auto"
    scorer_dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.4
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    cpu_threads_bind: str = field(default_factory=all_cpus)
    max_num_seqs: int = 256
