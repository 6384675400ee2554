"""What one path run yields, and the meters that fill it in."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from types import TracebackType

import psutil


def machine_busy_seconds() -> float:
    """CPU-seconds spent by the whole machine (all processes, user + system) since boot.

    The paths live in different process trees (a server and its engine-core children, two
    `vllm serve` processes, the bench itself), so the fair count is machine-wide: the bench is
    meant to run with nothing else busy."""
    t = psutil.cpu_times()
    return float(
        t.user
        + t.system
        + getattr(t, "nice", 0.0)
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
    )


class Meter:
    """Wall clock and machine CPU time over a `with` block."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __enter__(self) -> Meter:
        self._t0 = time.perf_counter()
        self._c0 = machine_busy_seconds()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = machine_busy_seconds() - self._c0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class PathRun:
    """One path over the whole workload."""

    path: str
    label: str
    pairs: int
    wall_s: float
    cpu_s: float
    latencies_s: list[float]
    prompt_tokens: int  # prompt tokens submitted to the engines (or the model)
    computed_tokens: int  # of those, the ones actually run (prefix-cache hits excluded)
    rewards: list[float]  # one per pair, in workload order
    breakdown_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    float32: bool = True  # computes in float32: held to the tight reward tolerance

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s

    def summary(self) -> dict[str, object]:
        return {
            "path": self.path,
            "label": self.label,
            "pairs": self.pairs,
            "wall_s": round(self.wall_s, 3),
            "pairs_per_s": round(self.pairs_per_s, 4),
            "p50_s": round(percentile(self.latencies_s, 50), 3),
            "p99_s": round(percentile(self.latencies_s, 99), 3),
            "requests": len(self.latencies_s),
            "cpu_s_per_pair": round(self.cpu_s / self.pairs, 3),
            "prompt_tokens_per_pair": round(self.prompt_tokens / self.pairs, 1),
            "computed_tokens_per_pair": round(self.computed_tokens / self.pairs, 1),
            "breakdown_s": {k: round(v, 3) for k, v in self.breakdown_s.items()},
            "mean_reward": round(statistics.fmean(self.rewards), 4) if self.rewards else None,
            "notes": self.notes,
        }
