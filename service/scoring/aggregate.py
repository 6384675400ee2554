"""Inference-time scaling: the reward of an item is the mean of its m critique-conditioned rewards."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_std(rewards: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation; one reward has std 0."""
    if not rewards:
        raise ValueError("no rewards to aggregate")
    mean = math.fsum(rewards) / len(rewards)
    var = math.fsum((r - mean) ** 2 for r in rewards) / len(rewards)
    return mean, math.sqrt(var)
