"""λ(t), the weight of the critique loss in L = λ(t)·ℓ_c + (1 − λ(t))·ℓ_r (Critic-RM, eq. 5).

With K epochs of T steps each: λ = 1 for the first K − 1 epochs (the model learns to critique),
then it falls linearly in the last epoch, λ(t) = 1 − β·(t − (K − 1)T)/T, so the reward head is
trained last and on top of the critiques. A constant λ is the paper's ablation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LambdaSchedule:
    epochs: int  # K
    steps_per_epoch: int  # T (optimizer steps)
    beta: float = 0.9
    constant: float | None = None  # set: the ablation, λ(t) = constant for every step

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError("epochs and steps_per_epoch must be at least 1")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError("beta must be in [0, 1]")
        if self.constant is not None and not 0.0 <= self.constant <= 1.0:
            raise ValueError("constant lambda must be in [0, 1]")

    def __call__(self, step: int) -> float:
        """λ at optimizer step `step` (0-based; the paper's t)."""
        if self.constant is not None:
            return self.constant
        last_start = (self.epochs - 1) * self.steps_per_epoch
        if step < last_start:
            return 1.0
        progress = min(step - last_start, self.steps_per_epoch) / self.steps_per_epoch
        return 1.0 - self.beta * progress
