"""The vLLM plugin (entry point ``vllm.general_plugins`` in pyproject): registers the one-engine
layout's model class in every vLLM process. vLLM-CPU spawns its engine core and workers, so a
registration made in the gateway process alone would never reach them; a plugin runs in each.
The class is registered by name, so loading the plugin imports nothing heavy."""

from __future__ import annotations

import json
from pathlib import Path

ARCHITECTURE = "CriticRMForCausalLM"
# The hf_overrides key naming T, the token whose logit carries the reward (reward_logit_model).
TOKEN_KEY = "critic_rm_reward_logit_id"
# The fused layout's logits processor (loaded by name in the engine process) and the
# SamplingParams.extra_args key by which a critique request asks for it.
TAIL_PROCESSOR = "service.engines.fused_tail:FusedTailProcessor"
TAIL_KEY = "critic_rm_fused_tail"
# The backbones whose vLLM class CriticRMForCausalLM subclasses (vLLM runs Mistral checkpoints
# on its Llama class too); any other architecture would load into the wrong class.
BACKBONES = frozenset({"LlamaForCausalLM", "MistralForCausalLM"})


def check_backbone(generator_view: Path) -> None:
    """Refuse, before any engine starts, a backbone the one-engine model cannot run."""
    config = json.loads((generator_view / "config.json").read_text())
    archs = config.get("architectures") or ["LlamaForCausalLM"]
    if archs[0] not in BACKBONES:
        raise ValueError(
            f"engine layout 'one' runs {', '.join(sorted(BACKBONES))} backbones, not "
            f"{archs[0]}: serve this checkpoint on layout 'two'"
        )


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            ARCHITECTURE, "service.engines.reward_logit_model:CriticRMForCausalLM"
        )
