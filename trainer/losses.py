"""The two Critic-RM losses and their mix.

ℓ_c: mean negative log-likelihood of the critique tokens given (x, y) (the LM head).
ℓ_r: Bradley-Terry, −log σ(r(x, [y+; z+]) − r(x, [y−; z−])) (the reward head, read at the reward
token after the critique)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def critique_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Mean NLL over the tokens where `loss_mask` is 1 (the critique), predicting token i from
    the logits at i − 1. logits [B, L, V], input_ids and loss_mask [B, L]."""
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(shifted.dtype)
    nll = F.cross_entropy(shifted.transpose(1, 2), targets, reduction="none")
    count = mask.sum()
    if count == 0:
        return shifted.sum() * 0.0  # keeps the graph; nothing to learn in this batch
    return (nll * mask).sum() / count


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean −log σ(r+ − r−) over the pairs."""
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def anchor_loss(conditioned: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Mean (r(x, [y; z]) − sg(r(x, y)))²: a critique may move a response's reward away from
    its critique-free reward only as far as Bradley-Terry on critiques pays for. Gradient flows
    into the critique-conditioned reward only, so noisy critiques never drag the plain one."""
    return (conditioned.float() - plain.detach().float()).pow(2).mean()


def joint(lam: float, critique_loss: torch.Tensor, reward_loss: torch.Tensor) -> torch.Tensor:
    return lam * critique_loss + (1.0 - lam) * reward_loss
