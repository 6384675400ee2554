"""The one-engine layout's model: the causal LM whose logit at one reserved token id T is the
reward head's r = w·h of the position being sampled, so one generate engine serves critiques and
rewards from one copy of the weights.

A scoring request is a one-token request over the scorer sequence with
``logprob_token_ids=[T]`` under ``logprobs_mode="raw_logits"``: vLLM copies the raw logits
before logit_bias, penalties and temperature, so T's value there is r at the last token, which
is what the pooling scorer reads. Critique requests carry ``logit_bias {T: -100}`` (applied
after that copy), so T is never sampled. Loaded in every vLLM process by the plugin in
``service.engines.vllm_plugin``; imports torch and vLLM, so nothing in the gateway imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM

from service.engines.vllm_plugin import ARCHITECTURE, TOKEN_KEY

HEAD_WEIGHT = "score.weight"  # the reward head's name in the scorer view's reward_head file


class CriticRMForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` plus the reward head, written into T's logit in float32."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        token = getattr(config, TOKEN_KEY, None)
        if not isinstance(token, int) or not 0 <= token < config.vocab_size:
            raise ValueError(
                f"{ARCHITECTURE} needs hf_overrides {{{TOKEN_KEY!r}: a token id below "
                f"{config.vocab_size}}}, got {token!r}"
            )
        self.reward_logit_id = token
        # float32 whatever the model dtype: a bf16 head would round the reward.
        self.reward_weight = nn.Parameter(
            torch.zeros(config.hidden_size, dtype=torch.float32), requires_grad=False
        )
        self._head_loaded = False

    def _reward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.to(torch.float32) @ self.reward_weight

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)
        if logits is None:  # tensor parallel: the gathered logits live on rank 0 only
            return None
        logits = logits.to(torch.float32)  # the sampler upcasts anyway
        logits[..., self.reward_logit_id] = self._reward(hidden_states)
        return logits

    def compute_logits_local(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The GPU V2 runner's batch-sharded sampling: each rank holds its vocabulary shard, and
        # the rank whose shard holds T writes it.
        logits = super().compute_logits_local(hidden_states).to(torch.float32)
        shard = self.lm_head.shard_indices
        if shard.org_vocab_start_index <= self.reward_logit_id < shard.org_vocab_end_index:
            column = self.reward_logit_id - shard.org_vocab_start_index
            logits[..., column] = self._reward(hidden_states)
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def backbone() -> Iterator[tuple[str, torch.Tensor]]:
            # A generator, so a large model's shards still stream through the loader.
            for name, tensor in weights:
                if name == HEAD_WEIGHT:
                    if tensor.numel() != self.reward_weight.numel():
                        raise ValueError(
                            f"{HEAD_WEIGHT} has shape {tuple(tensor.shape)}, not one row of "
                            f"{self.reward_weight.numel()}: a scalar reward head is needed"
                        )
                    self.reward_weight.data.copy_(tensor.reshape(-1).to(torch.float32))
                    self._head_loaded = True
                else:
                    yield name, tensor

        loaded = super().load_weights(backbone())
        if not self._head_loaded:
            raise ValueError(
                f"no {HEAD_WEIGHT} among the weights: {ARCHITECTURE} loads the scorer view "
                "(its reward_head.safetensors beside the backbone)"
            )
        return {*loaded, "reward_weight"}
