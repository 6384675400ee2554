"""Preference training of the critique head (issue 12): what a critique achieves, not only
imitation of kept critiques.

Pure losses over per-sequence log-probabilities (sums over the critique tokens):
- DPO (Rafailov et al. 2023): −log σ(β·[(log π(c⁺) − log π_ref(c⁺)) − (log π(c⁻) − log π_ref(c⁻))])
  over (preferred, dispreferred) critique pairs: high- against low-utility critiques of one
  response (RCO's CU pairs), or kept against rejected judgment trajectories (SyncPL).
- RCO's pointwise loss, after DRO (Richemond et al. 2024): for the N critiques c_i of one
  response with utilities CU_i, (log π(c_i)/π_ref(c_i) + log Z − CU_i/β)², with
  log Z = log mean_i exp(CU_i/β) estimated from the N samples. Its minimum is
  π ∝ π_ref·exp(CU/β).

The reference policy costs no second copy of the weights: with LoRA it is the same model with
the adapter disabled (`reference_logps`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from service.engines.torch_scorer import pad_right
from trainer.examples import LmSequence, predict_mask
from trainer.model import causal_of
from trainer.run import Run, StageError


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Mean DPO loss over pairs; every argument [P] holds sequence log-probabilities."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin.float()).mean()


def rco_loss(
    policy: torch.Tensor, reference: torch.Tensor, utility: torch.Tensor, beta: float
) -> torch.Tensor:
    """Mean RCO/DRO pointwise loss; [B, N]: N critiques of each of B responses, their
    sequence log-probabilities under the policy and the reference, and their utilities."""
    scaled = utility.float() / beta
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True) - math.log(utility.size(-1))
    residual = (policy.float() - reference.float()) + log_z - scaled
    return residual.pow(2).mean()


def sequence_logps(model: Any, seqs: Sequence[LmSequence], pad_id: int) -> torch.Tensor:
    """Σ log p(critique tokens | prompt) per sequence [len(seqs)] under the causal LM `model`
    (logits only where the critique is)."""
    device = next(model.parameters()).device
    ids, mask = pad_right([s.ids for s in seqs], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    causal = causal_of(model)
    hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state
    predict = predict_mask(seqs, ids.size(1)).to(device)
    logits = causal.lm_head(hidden[:, :-1][predict]).float()
    token_logps = torch.gather(
        F.log_softmax(logits, dim=-1), 1, ids[:, 1:][predict].unsqueeze(1)
    ).squeeze(1)
    rows = torch.arange(len(seqs), device=device).unsqueeze(1).expand_as(predict)[predict]
    out = torch.zeros(len(seqs), device=device, dtype=token_logps.dtype)
    return out.index_add(0, rows, token_logps)


@contextmanager
def adapter_disabled(model: Any) -> Iterator[None]:
    """The reference policy: a PeftModel with its adapter switched off (the base weights)."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError(
            "preference training needs LoRA (train.lora.enabled): the reference policy is the "
            "model with its adapter disabled, not a second copy of the weights"
        )
    with model.disable_adapter():
        yield


def reference_logps(model: Any, seqs: Sequence[LmSequence], pad_id: int) -> torch.Tensor:
    with torch.no_grad(), adapter_disabled(model):
        return sequence_logps(model, seqs, pad_id)


Completion = LmSequence | tuple[LmSequence, ...]  # one text, or a trajectory's segments


def completion_logps(model: Any, items: Sequence[Completion], pad_id: int) -> torch.Tensor:
    """Σ log p per completion [len(items)]: a trajectory's is the sum over its segments, each
    scored on its own prompt (its probability factorises so)."""
    parts = [(i, s) for i, item in enumerate(items) for s in _segments(item)]
    logps = sequence_logps(model, [s for _, s in parts], pad_id)
    owner = torch.tensor([i for i, _ in parts], device=logps.device)
    return torch.zeros(len(items), device=logps.device, dtype=logps.dtype).index_add(
        0, owner, logps
    )


def _segments(item: Completion) -> tuple[LmSequence, ...]:
    return item if isinstance(item, tuple) else (item,)


def train_dpo(
    model: Any,
    pairs: Sequence[tuple[Completion, Completion]],
    *,
    beta: float,
    lr: float,
    epochs: int,
    per_step: int,
    seed: int,
    pad_id: int,
) -> list[float]:
    """DPO on (preferred, dispreferred) completions of a LoRA model, in place: critique
    sequences, or judgment trajectories as segment tuples; returns the loss of every optimizer
    step. The reference log-probabilities are computed once, with the adapter disabled, before
    the first step."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    ref_chosen, ref_rejected = [], []
    for first in range(0, len(pairs), per_step):  # batched, as the training steps are
        part = pairs[first : first + per_step]
        with torch.no_grad(), adapter_disabled(model):
            logps = completion_logps(model, [c for c, _ in part] + [r for _, r in part], pad_id)
        ref_chosen += list(logps[: len(part)])
        ref_rejected += list(logps[len(part) :])

    def step_loss(batch: list[int]) -> torch.Tensor:
        items = [pairs[i][0] for i in batch] + [pairs[i][1] for i in batch]
        logps = completion_logps(model, items, pad_id)
        n = len(batch)
        return dpo_loss(
            logps[:n],
            logps[n:],
            torch.stack([ref_chosen[i] for i in batch]),
            torch.stack([ref_rejected[i] for i in batch]),
            beta,
        )

    return _optimise(
        model, len(pairs), step_loss, lr=lr, epochs=epochs, per_step=per_step, seed=seed
    )


def _optimise(
    model: Any,
    count: int,
    step_loss: Callable[[list[int]], torch.Tensor],
    *,
    lr: float,
    epochs: int,
    per_step: int,
    seed: int,
) -> list[float]:
    """AdamW over the trainable weights, `per_step` of `count` items a step in a seeded
    shuffled order each epoch; returns every step's loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        order = list(range(count))
        rng.shuffle(order)
        for first in range(0, count, per_step):
            loss = step_loss(order[first : first + per_step])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def train_rco(
    model: Any,
    groups: Sequence[tuple[Sequence[LmSequence], Sequence[float]]],
    *,
    beta: float,
    lr: float,
    epochs: int,
    per_step: int,
    seed: int,
    pad_id: int,
) -> list[float]:
    """RCO's pointwise loss on each response's N critiques and their utilities, a LoRA model
    trained in place; returns the loss of every optimizer step. Like DPO, the reference
    log-probabilities are computed once, adapter disabled, before the first step."""
    if not groups:
        raise ValueError("no critique groups to train on")
    reference = [reference_logps(model, list(seqs), pad_id) for seqs, _ in groups]

    def step_loss(batch: list[int]) -> torch.Tensor:
        logps = sequence_logps(model, [s for i in batch for s in groups[i][0]], pad_id)
        parts, at = [], 0
        for i in batch:  # N may differ between responses: one loss term each
            seqs, utilities = groups[i]
            n = len(seqs)
            parts.append(
                rco_loss(
                    logps[at : at + n].unsqueeze(0),
                    reference[i].unsqueeze(0),
                    torch.tensor([list(utilities)], device=logps.device),
                    beta,
                )
            )
            at += n
        return torch.stack(parts).mean()

    return _optimise(
        model, len(groups), step_loss, lr=lr, epochs=epochs, per_step=per_step, seed=seed
    )


def after_joint_training(
    run: Run, policy: Any, records: list[dict[str, Any]], fmt: Any, pad_id: int
) -> dict[str, Any]:
    """Preference training of the critique head after the joint training (train.preference):
    DPO on the utility critique pairs (critic mode) or on kept against rejected judgment
    trajectories (syncpl mode), or RCO's pointwise loss on every critique's utility."""
    from trainer import distributed
    from trainer.examples import critique_groups, critique_pairs
    from trainer.syncpl import dpo_trajectories

    p = run.cfg.train.preference
    if p.loss == "none":
        return {}
    if distributed.launched():
        raise StageError("train.preference runs in one process for now, not under a launcher")
    tokens, max_len = run.cfg.sampling.max_tokens, run.cfg.train.max_len
    trainer: Callable[..., list[float]]
    if p.loss == "rco":
        data: Sequence[Any] = critique_groups(
            fmt, records, max_critique_tokens=tokens, max_len=max_len
        )
        trainer, kind = train_rco, "rco_groups"
        empty = (
            "train.preference.loss rco: no response has two or more critiques with a utility "
            "(sampling.num_critiques >= 2 and refine.method utility)"
        )
    elif run.cfg.train.mode == "syncpl":
        data = dpo_trajectories(fmt, records, max_len)
        trainer, kind = train_dpo, "dpo_pairs"
        empty = (
            "train.preference dpo: no pair kept a trajectory and rejected another; sample more "
            "trajectories (syncpl.samples) or more pairs"
        )
    else:
        data = critique_pairs(fmt, records, max_critique_tokens=tokens, max_len=max_len)
        trainer, kind = train_dpo, "dpo_pairs"
        empty = (
            "train.preference: no (high-CU, low-CU) critique pairs; every response's critiques "
            "had the same utility"
        )
    if not data:
        raise StageError(empty)
    losses = trainer(
        policy.model,
        data,
        beta=p.beta,
        lr=p.lr,
        epochs=p.epochs,
        per_step=p.pairs_per_step,
        seed=run.cfg.seed,
        pad_id=pad_id,
    )
    loss = kind.split("_")[0]
    return {kind: len(data), f"{loss}_loss_first": losses[0], f"{loss}_loss_last": losses[-1]}
