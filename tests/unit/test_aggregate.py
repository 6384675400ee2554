from __future__ import annotations

import math

import pytest

from service.scoring.aggregate import mean_and_std


def test_mean_and_population_std() -> None:
    mean, std = mean_and_std([1.0, 2.0, 3.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert std == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4))


def test_single_reward_has_zero_std() -> None:
    assert mean_and_std([-0.5]) == (-0.5, 0.0)


def test_empty_is_an_error() -> None:
    with pytest.raises(ValueError):
        mean_and_std([])
