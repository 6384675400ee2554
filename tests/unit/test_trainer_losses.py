"""λ(t) and both Critic-RM losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import bradley_terry, critique_nll, joint
from trainer.schedule import LambdaSchedule


def test_lambda_is_one_until_the_last_epoch_then_falls_linearly() -> None:
    lam = LambdaSchedule(epochs=3, steps_per_epoch=10, beta=0.5)
    assert [lam(t) for t in (0, 5, 19)] == [1.0, 1.0, 1.0]
    assert lam(20) == 1.0  # t = (K-1)T: the last epoch starts at λ = 1
    assert lam(25) == pytest.approx(1 - 0.5 * 5 / 10)
    assert lam(29) == pytest.approx(1 - 0.5 * 9 / 10)
    assert lam(30) == pytest.approx(0.5)  # t = KT
    assert lam(99) == pytest.approx(0.5)  # clamped past the end


def test_single_epoch_schedule_starts_falling_at_once() -> None:
    lam = LambdaSchedule(epochs=1, steps_per_epoch=4, beta=1.0)
    assert [lam(t) for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_constant_lambda_ablation() -> None:
    lam = LambdaSchedule(epochs=2, steps_per_epoch=5, constant=0.3)
    assert {lam(t) for t in range(10)} == {0.3}


@pytest.mark.parametrize(
    "kw", [{"epochs": 0}, {"steps_per_epoch": 0}, {"beta": 1.5}, {"constant": -0.1}]
)
def test_schedule_rejects_bad_settings(kw: dict[str, float]) -> None:
    args = {"epochs": 2, "steps_per_epoch": 3, **kw}
    with pytest.raises(ValueError):
        LambdaSchedule(**args)  # type: ignore[arg-type]


def test_bradley_terry_matches_hand_values() -> None:
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([1.0, 0.0])
    want = (-math.log(1 / (1 + math.exp(-1.0))) + math.log(2.0)) / 2
    assert bradley_terry(chosen, rejected).item() == pytest.approx(want, rel=1e-6)


def test_critique_nll_counts_only_masked_tokens() -> None:
    # Vocabulary of 2; position i predicts token i+1.
    logits = torch.zeros(1, 3, 2)
    logits[0, 0] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4 at position 0
    logits[0, 1] = torch.tensor([5.0, 5.0])  # p = 1/2, but target 2 is outside the mask
    ids = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[0, 1, 0]])  # only token 1 (predicted from position 0) counts
    assert critique_nll(logits, ids, mask).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    mask_all = torch.tensor([[0, 1, 1]])
    want = (-math.log(0.75) - math.log(0.5)) / 2
    assert critique_nll(logits, ids, mask_all).item() == pytest.approx(want, rel=1e-6)


def test_critique_nll_with_nothing_to_learn_is_zero_and_differentiable() -> None:
    logits = torch.randn(1, 3, 2, requires_grad=True)
    loss = critique_nll(logits, torch.tensor([[0, 1, 0]]), torch.zeros(1, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def test_joint_mixes_by_lambda() -> None:
    lc, lr = torch.tensor(2.0), torch.tensor(4.0)
    assert joint(1.0, lc, lr).item() == 2.0
    assert joint(0.25, lc, lr).item() == pytest.approx(0.25 * 2 + 0.75 * 4)
