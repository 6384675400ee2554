"""Build the engines of one checkpoint version, as an EngineConfig chooses; heavy imports stay
here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from service.checkpoint.store import CheckpointVersion
from service.contract.formatting import PromptFormatter
from service.engines.base import CritiqueGenerator, RewardScorer
from service.engines.config import EngineConfig

if TYPE_CHECKING:
    from service.engines.vllm_engines import VllmCritiqueGenerator, VllmLogitScorer

log = logging.getLogger(__name__)
ONE_ENGINE = ("one", "fused")


def served_layout(version: CheckpointVersion, config: EngineConfig) -> str:
    """The layout `version` is served on: `fused` needs a checkpoint of format 2 (the reward
    read after the critique's own ids); a format-1 checkpoint runs on the fallback instead."""
    if config.engine_layout == "fused" and not version.manifest.fused:
        return config.fallback_layout
    return config.engine_layout


def for_version(version: CheckpointVersion, config: EngineConfig) -> EngineConfig:
    """`config` with the layout `version` is served on (and so that layout's dtypes)."""
    layout = served_layout(version, config)
    if layout == config.engine_layout:
        return config
    log.info("%s is checkpoint format 1: served on layout %s", version.path.name, layout)
    return dataclasses.replace(config, engine_layout=layout)  # type: ignore[arg-type]


def load_formatter(
    version: CheckpointVersion, config: EngineConfig, fused: bool | None = None
) -> PromptFormatter:
    """The version's formatter; `fused` overrides the format the manifest states (the trainer
    builds a format-2 version's sequences on a format-1 base)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(version.generator_path)
    manifest = version.manifest
    return PromptFormatter(
        tokenizer,
        manifest.templates,
        manifest.reward_token,
        config.max_model_len,
        fused=manifest.fused if fused is None else fused,
    )


def load_generator(version: CheckpointVersion, config: EngineConfig) -> CritiqueGenerator:
    """The critique generator alone (the trainer samples critiques with it); on layout `one`,
    the one engine, which owns its weights and is shut down with the generator."""
    from service.engines.vllm_engines import configure_cpu_env

    configure_cpu_env(config)
    config = for_version(version, config)
    if config.engine_layout in ONE_ENGINE:
        return _load_one(version, config, load_formatter(version, config))[0]
    return _load_generator(version, config)


def load_scorer(version: CheckpointVersion, config: EngineConfig) -> RewardScorer:
    """The reward scorer alone (an evaluation at m = 0 needs no generator); on layout `one`,
    the one engine's scorer, which then owns the engine."""
    from service.engines.vllm_engines import VllmLogitScorer, configure_cpu_env

    configure_cpu_env(config)
    config = for_version(version, config)
    if config.engine_layout in ONE_ENGINE:
        _, scorer = _load_one(version, config, load_formatter(version, config))
        return VllmLogitScorer(scorer.engine, scorer.token, owns_engine=True)
    return _load_scorer(version, config)


def _load_one(
    version: CheckpointVersion, config: EngineConfig, formatter: PromptFormatter
) -> tuple[VllmCritiqueGenerator, VllmLogitScorer]:
    from service.engines.vllm_engines import FusedTail, load_one_engine
    from service.engines.vllm_plugin import check_backbone

    if config.scorer_backend != "vllm":
        raise ValueError(
            f"engine layout {config.engine_layout!r} scores on the vLLM engine: scorer backend vllm"
        )
    check_backbone(version.generator_path)
    token = formatter.reward_logit_id()
    log.info("one engine: the reward is token %d's logit", token)
    fused = None
    if config.engine_layout == "fused":  # for_version: a format-2 checkpoint
        tokenizer = formatter.tokenizer
        fused = FusedTail(
            tail=(*formatter.fused_tail, token),
            decode=lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
        )
    return load_one_engine(version.scorer_path, config, token, fused)


def _load_generator(version: CheckpointVersion, config: EngineConfig) -> CritiqueGenerator:
    from service.engines.vllm_engines import VllmCritiqueGenerator

    return VllmCritiqueGenerator.load(version.generator_path, config)


def _load_scorer(version: CheckpointVersion, config: EngineConfig) -> RewardScorer:
    if config.scorer_backend == "torch":
        from service.engines.torch_scorer import TorchRewardScorer

        return TorchRewardScorer.load(version.scorer_path, config.scorer_dtype)
    from service.engines.vllm_engines import VllmRewardScorer

    return VllmRewardScorer.load(version.scorer_path, config)


async def load_engines(
    version: CheckpointVersion, config: EngineConfig, formatter: PromptFormatter
) -> tuple[CritiqueGenerator, RewardScorer]:
    """Layout `two`: start both engines at once (most of a start is process spawn, imports and
    compilation in the engines' own processes, which overlap well); if one fails, the other is
    shut down. Layout `one`: one engine over the scorer view serves both."""
    from service.engines.vllm_engines import configure_cpu_env

    configure_cpu_env(config)
    config = for_version(version, config)
    if config.engine_layout in ONE_ENGINE:
        return await asyncio.to_thread(_load_one, version, config, formatter)
    gen_task = asyncio.ensure_future(asyncio.to_thread(_load_generator, version, config))
    scorer_task = asyncio.ensure_future(asyncio.to_thread(_load_scorer, version, config))
    results = await asyncio.gather(gen_task, scorer_task, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                r.shutdown()
        raise errors[0]
    generator, scorer = results
    return generator, scorer  # type: ignore[return-value]
