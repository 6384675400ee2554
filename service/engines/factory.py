"""Build the engines of one checkpoint version, as chosen by settings; heavy imports stay here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from service.checkpoint.manifest import Manifest
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.core.formatting import PromptFormatter
from service.engines.base import CritiqueGenerator, RewardScorer
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelRuntime:
    """Everything needed to serve one checkpoint version. `use()` marks work in progress (a
    request or an engine batch), so a retired version is shut down only once it is idle."""

    version: CheckpointVersion
    formatter: PromptFormatter
    generator: CritiqueGenerator
    scorer: RewardScorer
    active: int = field(default=0, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """True once nothing uses this runtime; False if `timeout` passed first."""
        if self.active == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def manifest(self) -> Manifest:
        return self.version.manifest

    @property
    def model_version(self) -> str:
        return self.version.manifest.model_version

    def shutdown(self) -> None:
        for engine in (self.generator, self.scorer):
            try:
                engine.shutdown()
            except Exception:  # shutting down must not raise over another error
                log.exception("engine shutdown failed")


def load_formatter(version: CheckpointVersion, settings: Settings) -> PromptFormatter:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(version.generator_path)
    manifest = version.manifest
    return PromptFormatter(
        tokenizer, manifest.templates, manifest.reward_token, settings.max_model_len
    )


def load_generator(version: CheckpointVersion, settings: Settings) -> CritiqueGenerator:
    """The critique generator alone (the trainer samples critiques with it)."""
    from service.engines.vllm_engines import configure_cpu_env

    configure_cpu_env(settings)
    return _load_generator(version, settings)


def _load_generator(version: CheckpointVersion, settings: Settings) -> CritiqueGenerator:
    from service.engines.vllm_engines import VllmCritiqueGenerator

    return VllmCritiqueGenerator.load(version.generator_path, settings)


def _load_scorer(version: CheckpointVersion, settings: Settings) -> RewardScorer:
    if settings.scorer_backend == "torch":
        from service.engines.torch_scorer import TorchRewardScorer

        return TorchRewardScorer.load(version.scorer_path, settings.scorer_dtype)
    from service.engines.vllm_engines import VllmRewardScorer

    return VllmRewardScorer.load(version.scorer_path, settings)


async def load_engines(
    version: CheckpointVersion, settings: Settings
) -> tuple[CritiqueGenerator, RewardScorer]:
    """Start both engines at once: most of a start is process spawn, imports and compilation
    in the engines' own processes, which overlap well. If one fails, the other is shut down."""
    from service.engines.vllm_engines import configure_cpu_env

    configure_cpu_env(settings)
    gen_task = asyncio.ensure_future(asyncio.to_thread(_load_generator, version, settings))
    scorer_task = asyncio.ensure_future(asyncio.to_thread(_load_scorer, version, settings))
    results = await asyncio.gather(gen_task, scorer_task, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                r.shutdown()
        raise errors[0]
    generator, scorer = results
    return generator, scorer  # type: ignore[return-value]


async def load_runtime(settings: Settings, version: str | None = None) -> ModelRuntime:
    """Validate the checkpoint, then start its engines (in a worker thread: engine start-up
    blocks for tens of seconds and the event loop must keep answering /health)."""
    root = CheckpointRoot(settings.checkpoint_root)
    ckpt = await asyncio.to_thread(
        root.resolve, version or settings.model_version, settings.verify_hashes
    )
    log.info("loading checkpoint %s from %s", ckpt.manifest.model_version, ckpt.path)
    formatter = await asyncio.to_thread(load_formatter, ckpt, settings)
    generator, scorer = await load_engines(ckpt, settings)
    return ModelRuntime(ckpt, formatter, generator, scorer)
