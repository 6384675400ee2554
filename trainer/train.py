"""Joint training: L = λ(t)·ℓ_c + (1 − λ(t))·ℓ_r (critic mode), or ℓ_r alone (bt mode).

ℓ_c is the mean NLL of the critique tokens given the critique prompt (the service's generator
input); ℓ_r is Bradley-Terry on rewards read at the reward token that ends the service's scorer
input. The LM head's logits are computed only where ℓ_c needs them."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from service.engines.torch_scorer import pad_right
from trainer.config import TrainConfig
from trainer.examples import LmSequence, PairExample
from trainer.losses import bradley_terry, joint
from trainer.model import Policy
from trainer.schedule import LambdaSchedule


@dataclass
class TrainResult:
    steps: int
    seconds: float
    log: list[dict[str, float]] = field(default_factory=list)

    def mean(self, key: str, first: bool, n: int = 5) -> float | None:
        values = [r[key] for r in self.log if r.get(key) is not None]
        if not values:
            return None
        part = values[:n] if first else values[-n:]
        return sum(part) / len(part)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def schedule_for(cfg: TrainConfig, steps_per_epoch: int) -> LambdaSchedule:
    if cfg.mode == "bt":
        return LambdaSchedule(cfg.epochs, steps_per_epoch, constant=0.0)
    return LambdaSchedule(cfg.epochs, steps_per_epoch, cfg.beta, cfg.constant_lambda)


def selected_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL of `targets` [n] under `logits` [n, V] (the critique positions only)."""
    return F.cross_entropy(logits.float(), targets)


def critique_loss(policy: Policy, seqs: Sequence[LmSequence], pad_id: int) -> torch.Tensor:
    device = policy.head.weight.device
    ids, mask = pad_right([s.ids for s in seqs], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    hidden = policy.hidden(ids, mask)
    # Position i predicts token i + 1; the targets are the critique tokens (and end of turn).
    target = torch.zeros_like(mask, dtype=torch.bool)
    for row, s in enumerate(seqs):
        target[row, s.target_from : len(s.ids)] = True
    predict = target[:, 1:]
    logits = policy.causal.lm_head(hidden[:, :-1][predict])
    return selected_nll(logits, ids[:, 1:][predict])


def rewards(policy: Policy, seqs: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    device = policy.head.weight.device
    ids, mask = pad_right(seqs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    hidden = policy.hidden(ids, mask)
    last = mask.sum(dim=1) - 1
    picked = hidden[torch.arange(hidden.size(0), device=device), last]
    return policy.head(picked.float()).squeeze(-1)


def _step_losses(
    policy: Policy, batch: Sequence[PairExample], lam: float, pad_id: int
) -> tuple[torch.Tensor, float | None, float | None]:
    loss_c = loss_r = None
    if lam > 0:
        seqs = [s for ex in batch for s in (ex.chosen_lm, ex.rejected_lm) if s is not None]
        if seqs:
            loss_c = critique_loss(policy, seqs, pad_id)
    pairs = [
        (ex.chosen_score, ex.rejected_score)
        for ex in batch
        if ex.chosen_score is not None and ex.rejected_score is not None
    ]
    if lam < 1 and pairs:
        r = rewards(policy, [c for c, _ in pairs] + [r for _, r in pairs], pad_id)
        loss_r = bradley_terry(r[: len(pairs)], r[len(pairs) :])
    zero = policy.head.weight.sum() * 0.0
    total = joint(
        lam, loss_c if loss_c is not None else zero, loss_r if loss_r is not None else zero
    )
    return (
        total,
        float(loss_c.detach()) if loss_c is not None else None,
        float(loss_r.detach()) if loss_r is not None else None,
    )


def train(
    policy: Policy,
    examples: Sequence[PairExample],
    cfg: TrainConfig,
    *,
    seed: int,
    pad_id: int,
    log_path: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train in place; one optimizer step per `pairs_per_step` pairs, accumulated over
    micro-batches of `micro_batch` pairs. Deterministic for a seed on the same device."""
    from tqdm import tqdm

    if not examples:
        raise ValueError("no training examples (did the instance filter keep any pair?)")
    steps_per_epoch = math.ceil(len(examples) / cfg.pairs_per_step)
    lam_at = schedule_for(cfg, steps_per_epoch)
    head_params = [policy.head.weight]
    body_params = policy.trainable()
    optimizer = torch.optim.AdamW(
        [
            {"params": body_params, "lr": cfg.lr},
            {"params": head_params, "lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    rng = random.Random(seed)
    total_steps = steps_per_epoch * cfg.epochs
    result = TrainResult(steps=total_steps, seconds=0.0)
    log_file = log_path.open("w") if log_path is not None else None
    bar = tqdm(total=total_steps, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    policy.train()
    step = 0
    try:
        for epoch in range(cfg.epochs):
            order = list(range(len(examples)))
            rng.shuffle(order)
            for first in range(0, len(order), cfg.pairs_per_step):
                batch = [examples[i] for i in order[first : first + cfg.pairs_per_step]]
                lam = lam_at(step)
                parts_c, parts_r = [], []
                for m in range(0, len(batch), cfg.micro_batch):
                    micro = batch[m : m + cfg.micro_batch]
                    loss, lc, lr_ = _step_losses(policy, micro, lam, pad_id)
                    (loss * (len(micro) / len(batch))).backward()
                    if lc is not None:
                        parts_c.append((lc, len(micro)))
                    if lr_ is not None:
                        parts_r.append((lr_, len(micro)))
                torch.nn.utils.clip_grad_norm_(body_params + head_params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                row: dict[str, Any] = {
                    "step": step,
                    "epoch": epoch,
                    "lambda": lam,
                    "loss_c": _weighted(parts_c),
                    "loss_r": _weighted(parts_r),
                    "seconds": time.perf_counter() - start,
                }
                result.log.append(row)
                if log_file is not None:
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                bar.set_postfix(
                    {
                        "λ": f"{lam:.2f}",
                        "ℓc": "-" if row["loss_c"] is None else f"{row['loss_c']:.3f}",
                        "ℓr": "-" if row["loss_r"] is None else f"{row['loss_r']:.3f}",
                    }
                )
                bar.update(1)
                step += 1
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    policy.eval()
    result.seconds = time.perf_counter() - start
    return result


def _weighted(parts: list[tuple[float, int]]) -> float | None:
    if not parts:
        return None
    return sum(v * n for v, n in parts) / sum(n for _, n in parts)
