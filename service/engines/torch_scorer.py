"""Reference reward scorer in plain transformers: the parity oracle for the vLLM scorer and the
trainer's scoring code. Reads the reward at the LAST token of each sequence explicitly:
transformers' own pooling picks the token before the first pad, and SmolLM2's pad token is
<|im_end|>, which also closes every chat turn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from service.checkpoint.manifest import REWARD_HEAD_FILE, REWARD_HEAD_KEY
from service.engines.base import EngineStats


def rewards_at_last_token(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Raw rewards [batch] from an XForSequenceClassification model on right-padded inputs."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    picked = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    return model.score(picked).squeeze(-1)


def pad_right(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def load_scorer_model(scorer_dir: Path, dtype: str = "float32", device: str = "cpu") -> Any:
    """Backbone from the scorer view's weight files, head from reward_head.safetensors.

    transformers reads model.safetensors alone when it exists, so the head (which lives in its
    own file, shared-nothing with the generator view) is loaded explicitly."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is reported missing; it is loaded just below
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            scorer_dir, dtype=getattr(torch, dtype) if dtype != "auto" else "auto"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    head = load_file(str(Path(scorer_dir) / REWARD_HEAD_FILE))[REWARD_HEAD_KEY]
    with torch.no_grad():
        model.score.weight.copy_(head.to(model.score.weight.dtype))
    return model.to(device).eval()


class TorchRewardScorer:
    """RewardScorer on transformers; runs in a worker thread, one batch at a time."""

    def __init__(self, model: Any, pad_id: int, batch_size: int = 8) -> None:
        self.model = model
        self.pad_id = pad_id
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @classmethod
    def load(cls, scorer_dir: Path, dtype: str = "float32") -> TorchRewardScorer:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_scorer_model(scorer_dir, dtype, device)
        pad = model.config.pad_token_id
        return cls(model, int(pad if pad is not None else 0))

    def score_sync(self, sequences: Sequence[list[int]]) -> list[float]:
        out: list[float] = []
        device = next(self.model.parameters()).device
        with self._lock, torch.inference_mode():
            # Sort by length so each padded batch wastes little.
            order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
            scores: dict[int, float] = {}
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                ids, mask = pad_right([sequences[i] for i in idx], self.pad_id)
                values = rewards_at_last_token(self.model, ids.to(device), mask.to(device))
                for i, value in zip(idx, values.float().cpu().tolist(), strict=True):
                    scores[i] = float(value)
            out = [scores[i] for i in range(len(sequences))]
        return out

    async def score(self, sequences: Sequence[list[int]]) -> tuple[list[float], EngineStats]:
        rewards = await asyncio.to_thread(self.score_sync, sequences)
        return rewards, EngineStats(prompt_tokens=sum(len(s) for s in sequences))

    async def check_health(self) -> None:
        await asyncio.to_thread(self.score_sync, [[self.pad_id]])

    def shutdown(self) -> None:
        self.model = None
