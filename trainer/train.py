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
from trainer.examples import PairExample, predict_mask
from trainer.losses import anchor_loss, bradley_terry, joint
from trainer.model import Policy, causal_of
from trainer.schedule import LambdaSchedule


@dataclass
class TrainResult:
    steps: int
    seconds: float
    log: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0  # optimizer steps restored from a step-level checkpoint
    tokens: int = 0  # tokens forwarded (every process), since this process started
    # FSDP/DeepSpeed: the trained module's full state, gathered on the main process (the
    # module's own weights are shards); None otherwise.
    full_state: dict[str, Any] | None = None

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


class TrainModule(torch.nn.Module):
    """The backbone (with its adapter) and the reward head as one module, so DDP, FSDP and
    DeepSpeed wrap, shard and synchronise both. One forward per micro-batch: the LM head runs
    only at the critique positions of the first rows, the reward head at the last token of
    the others."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.model = policy.model
        self.head = policy.head

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, predict: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        causal = causal_of(self.model)
        hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lm_rows = predict.size(0)
        # Position i predicts token i + 1.
        logits = causal.lm_head(hidden[:lm_rows, :-1][predict])
        last = mask.sum(dim=1) - 1
        picked = hidden[torch.arange(hidden.size(0), device=hidden.device), last][lm_rows:]
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            reward = self.head(picked.float()).squeeze(-1)  # the head stays float32
        return logits, reward


def rewards(policy: Policy, seqs: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    device = policy.head.weight.device
    ids, mask = pad_right(seqs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    hidden = policy.hidden(ids, mask)
    last = mask.sum(dim=1) - 1
    picked = hidden[torch.arange(hidden.size(0), device=device), last]
    return policy.head(picked.float()).squeeze(-1)


@dataclass
class MicroBatch:
    """One forward's inputs: critique sequences first, then chosen rewards, then rejected."""

    ids: torch.Tensor
    mask: torch.Tensor
    predict: torch.Tensor  # [critique rows, L - 1]: where the LM head is read
    targets: torch.Tensor  # the critique tokens (and end of turn) it predicts
    pairs: int  # reward pairs
    # (critique-conditioned pair, plain pair of the same responses), as reward pair indices.
    anchors: list[tuple[int, int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.predict.size(0) == 0 and self.pairs == 0


def micro_batch(batch: Sequence[PairExample], lam: float, pad_id: int) -> MicroBatch:
    """What a micro-batch trains at weight λ: critiques when λ > 0, rewards when λ < 1."""
    lm = [s for ex in batch for s in (ex.chosen_lm, ex.rejected_lm) if s is not None]
    lm = lm if lam > 0 else []
    pairs: list[tuple[list[int], list[int]]] = []
    anchors: list[tuple[int, int]] = []
    for ex in batch if lam < 1 else []:
        if ex.chosen_score is None or ex.rejected_score is None:
            continue
        pairs.append((ex.chosen_score, ex.rejected_score))
        if ex.chosen_plain is not None and ex.rejected_plain is not None:
            pairs.append((ex.chosen_plain, ex.rejected_plain))
            anchors.append((len(pairs) - 2, len(pairs) - 1))
    seqs = [s.ids for s in lm] + [c for c, _ in pairs] + [r for _, r in pairs]
    if not seqs:  # nothing to learn; a forward still runs (every process must sync)
        first = next(s for s in (batch[0].chosen_score, *_lm_ids(batch[0])) if s is not None)
        seqs = [first]
    ids, mask = pad_right(seqs, pad_id)
    predict = predict_mask(lm, ids.size(1))
    targets = ids[: len(lm), 1:][predict]
    return MicroBatch(ids, mask, predict, targets, len(pairs), anchors)


def _lm_ids(ex: PairExample) -> list[list[int] | None]:
    return [s.ids if s is not None else None for s in (ex.chosen_lm, ex.rejected_lm)]


def micro_losses(
    module: Any,
    mb: MicroBatch,
    lam: float,
    device: torch.device,
    anchor: float = 0.0,
    anchor_on: str = "rewards",
) -> tuple[torch.Tensor, float | None, float | None, float | None]:
    """L = λ·ℓ_c + (1 − λ)·(ℓ_r + anchor·ℓ_a) of one micro-batch (the parts absent in it count
    0); also returns ℓ_c, ℓ_r and ℓ_a. ℓ_a holds each critique-conditioned reward (or each
    pair's margin, `anchor_on`) to the plain one."""
    logits, reward = module(mb.ids.to(device), mb.mask.to(device), mb.predict.to(device))
    zero = reward.sum() * 0.0 + logits.sum() * 0.0  # keeps every output in the graph
    loss_c = selected_nll(logits, mb.targets.to(device)) if mb.targets.numel() else None
    loss_r = bradley_terry(reward[: mb.pairs], reward[mb.pairs :]) if mb.pairs else None
    loss_a = None
    if mb.anchors and anchor > 0:
        crit = torch.tensor([c for c, _ in mb.anchors], device=reward.device)
        plain = torch.tensor([p for _, p in mb.anchors], device=reward.device)
        if anchor_on == "margins":
            loss_a = anchor_loss(
                reward[crit] - reward[mb.pairs + crit], reward[plain] - reward[mb.pairs + plain]
            )
        else:
            loss_a = anchor_loss(
                torch.cat([reward[crit], reward[mb.pairs + crit]]),
                torch.cat([reward[plain], reward[mb.pairs + plain]]),
            )
    reward_part = loss_r if loss_r is not None else zero
    total = joint(
        lam,
        loss_c if loss_c is not None else zero,
        reward_part + anchor * loss_a if loss_a is not None else reward_part,
    )
    return (
        total + zero,
        float(loss_c.detach()) if loss_c is not None else None,
        float(loss_r.detach()) if loss_r is not None else None,
        float(loss_a.detach()) if loss_a is not None else None,
    )


def micro_steps(cfg: TrainConfig, processes: int) -> int:
    """Micro-batches per process per optimizer step (Accelerate's gradient accumulation)."""
    return max(1, math.ceil(math.ceil(cfg.pairs_per_step / processes) / cfg.micro_batch))


def shares(
    batch: Sequence[PairExample], micro: int, rank: int, world: int, count: int
) -> list[list[PairExample]]:
    """This process's `count` micro-batches of one optimizer step: pairs rank, rank + world,
    ..., chunked by `micro`. Every step has the same count on every process (the last step of
    an epoch may leave some empty): each backward is a collective under DDP and FSDP, and
    DeepSpeed counts them to know when to step."""
    local = list(batch[rank::world])
    return [local[i * micro : (i + 1) * micro] for i in range(count)]


@dataclass
class Checkpointing:
    """Where the train stage's step-level checkpoints go (trainer.train_state), how often, and
    the digest that ties them to this stage's settings."""

    directory: Path
    digest: str
    every: int = 0  # optimizer steps between checkpoints; 0: only on SIGTERM


def _optimizer(module: TrainModule, cfg: TrainConfig) -> torch.optim.Optimizer:
    head = [module.head.weight]
    body = [p for n, p in module.named_parameters() if p.requires_grad and not n.startswith("head")]
    return torch.optim.AdamW(
        [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
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
    acc: Any = None,
    checkpoints: Checkpointing | None = None,
) -> TrainResult:
    """Train in place; one optimizer step per `pairs_per_step` pairs, accumulated over
    micro-batches of `micro_batch` pairs and shared among the processes of `acc` (an
    Accelerator; one process when None). Deterministic for a seed on the same device and
    process count; with `checkpoints`, resumes from the last step-level checkpoint and saves
    one every `every` steps and on SIGTERM (then exits with 143)."""
    from tqdm import tqdm

    from trainer import distributed, train_state

    if not examples:
        raise ValueError("no training examples (did the instance filter keep any pair?)")
    if acc is None:
        acc = distributed.accelerator(
            mixed_precision="no",
            log_with=[],
            project_dir=".",
            accumulation_steps=micro_steps(cfg, distributed.world_size()),
        )
    if acc.gradient_accumulation_steps != micro_steps(cfg, acc.num_processes):
        raise ValueError(
            "the Accelerator's gradient_accumulation_steps must be "
            f"{micro_steps(cfg, acc.num_processes)} (train.pairs_per_step / train.micro_batch "
            "per process)"
        )
    # Examples with variants take turns, one per epoch: each epoch has its own set.
    epochs = [[i for i, ex in enumerate(examples) if ex.active(e)] for e in range(cfg.epochs)]
    steps_per_epoch = math.ceil(len(epochs[0]) / cfg.pairs_per_step)
    lam_at = schedule_for(cfg, steps_per_epoch)
    if cfg.gradient_checkpointing:
        policy.causal.gradient_checkpointing_enable({"use_reentrant": False})
    module = TrainModule(policy)
    module, optimizer = acc.prepare(module, _optimizer(module, cfg))
    resumed = 0
    if checkpoints is not None:
        state = train_state.load(acc, checkpoints.directory, digest=checkpoints.digest)
        resumed = state.step if state is not None else 0
    total_steps = sum(math.ceil(len(e) / cfg.pairs_per_step) for e in epochs)
    result = TrainResult(steps=total_steps, seconds=0.0, resumed_from=resumed)
    main = acc.is_main_process
    if resumed and log_path is not None and log_path.is_file():
        # Rows after the checkpoint (a hard kill between checkpoints) are trained again.
        result.log = [r for r in _read_log(log_path) if r["step"] < resumed]
    log_file = log_path.open("w") if log_path is not None and main else None
    if log_file is not None:
        log_file.writelines(json.dumps(kept) + "\n" for kept in result.log)
    bar = tqdm(total=total_steps, initial=resumed, disable=not (progress and main), file=sys.stderr)
    rng = random.Random(seed)
    start = time.perf_counter()
    tokens = 0
    module.train()
    step = 0
    try:
        with train_state.stop_on_sigterm() as stop:
            for epoch in range(cfg.epochs):
                order = list(epochs[epoch])
                rng.shuffle(order)  # replayed on resume: the same data order
                for first in range(0, len(order), cfg.pairs_per_step):
                    if step < resumed:
                        step += 1
                        continue
                    batch = [examples[i] for i in order[first : first + cfg.pairs_per_step]]
                    lam = lam_at(step)
                    parts = _step(acc, module, batch, lam, cfg, pad_id)
                    tokens += int(parts[4])
                    acc.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    seconds = time.perf_counter() - start
                    row: dict[str, Any] = {
                        "step": step,
                        "epoch": epoch,
                        "lambda": lam,
                        "loss_c": parts[0] / parts[1] if parts[1] else None,
                        "loss_r": parts[2] / parts[3] if parts[3] else None,
                        "loss_a": parts[5] / parts[6] if parts[6] else None,
                        "lr": cfg.lr,
                        "tokens": tokens,
                        "tokens_per_s": tokens / seconds if seconds > 0 else None,
                        "seconds": seconds,
                    }
                    result.log.append(row)
                    _report(acc, row, log_file, bar)
                    step += 1
                    if checkpoints is not None and _should_save(acc, stop, checkpoints, step):
                        train_state.save(
                            acc, checkpoints.directory, step=step, digest=checkpoints.digest
                        )
                        if _stop_requested(acc, stop):
                            raise SystemExit(143)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    module.eval()
    result.seconds = time.perf_counter() - start
    result.tokens = tokens
    result.full_state = acc.get_state_dict(module) if train_state.sharded(acc) else None
    return result


def _step(
    acc: Any,
    module: Any,
    batch: Sequence[PairExample],
    lam: float,
    cfg: TrainConfig,
    pad_id: int,
) -> tuple[float, float, float, float, float, float, float]:
    """Forward and backward of this process's share of one optimizer step. Returns the step's
    loss sums and counts over every process (ℓ_c·n, n, ℓ_r·n, n), its tokens, and ℓ_a·n, n."""
    count = acc.gradient_accumulation_steps
    chunks = shares(batch, cfg.micro_batch, acc.process_index, acc.num_processes, count)
    sums = [0.0] * 7
    for chunk in chunks:
        mb = micro_batch(chunk or batch[:1], lam, pad_id)
        # Each micro-batch's mean loss weighs by its share of the step's pairs, so the average
        # over processes is the one-process step; Accelerate divides every backward by the
        # accumulation count, which the weights already account for.
        weight = len(chunk) * acc.num_processes / len(batch) * count
        with acc.accumulate(module):  # no gradient sync until the step's last micro-batch
            loss, lc, lr_, la = micro_losses(
                module, mb, lam, acc.device, cfg.reward_anchor, cfg.anchor_on
            )
            acc.backward(loss * weight)
        if chunk:
            sums[4] += float(mb.mask.sum())
            if lc is not None:
                sums[0] += lc * len(chunk)
                sums[1] += len(chunk)
            if lr_ is not None:
                sums[2] += lr_ * len(chunk)
                sums[3] += len(chunk)
            if la is not None:
                sums[5] += la * len(chunk)
                sums[6] += len(chunk)
    if acc.num_processes > 1:
        total = acc.reduce(torch.tensor(sums, device=acc.device), reduction="sum")
        sums = [float(v) for v in total.cpu()]
    return sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6]


def _read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _report(acc: Any, row: dict[str, Any], log_file: Any, bar: Any) -> None:
    if log_file is not None:
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()
    scalars = {
        f"train/{k}": v
        for k, v in row.items()
        if k in ("lambda", "loss_c", "loss_r", "loss_a", "lr", "tokens_per_s") and v is not None
    }
    acc.log(scalars, step=row["step"])
    bar.set_postfix(
        {
            "λ": f"{row['lambda']:.2f}",
            "ℓc": "-" if row["loss_c"] is None else f"{row['loss_c']:.3f}",
            "ℓr": "-" if row["loss_r"] is None else f"{row['loss_r']:.3f}",
        }
    )
    bar.update(1)


def _stop_requested(acc: Any, stop: Any) -> bool:
    """Whether any process got SIGTERM: all stop at the same step, or the others would hang in
    the next collective."""
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=acc.device)
    if acc.num_processes > 1:
        flag = acc.reduce(flag, reduction="sum")
    return bool(flag.item() > 0)


def _should_save(acc: Any, stop: Any, checkpoints: Checkpointing, step: int) -> bool:
    periodic = checkpoints.every > 0 and step % checkpoints.every == 0
    return periodic or _stop_requested(acc, stop)


def _weighted(parts: list[tuple[float, int]]) -> float | None:
    if not parts:
        return None
    return sum(v * n for v, n in parts) / sum(n for _, n in parts)
