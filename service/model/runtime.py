"""The served model: one checkpoint version with its prompt formatter and its two engines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from service.checkpoint.manifest import Manifest
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.contract.formatting import PromptFormatter
from service.engines.base import CritiqueGenerator, RewardScorer
from service.engines.dtype import generator_dtype
from service.engines.factory import for_version, load_engines, load_formatter
from service.settings import Settings

log = logging.getLogger(__name__)

UNTRAINED_WARNING = (
    "the served reward head is untrained (bootstrap checkpoint): rewards carry no preference "
    "signal yet; publish a trained checkpoint"
)


@dataclass(eq=False)
class ModelRuntime:
    """Everything needed to serve one checkpoint version. `use()` marks work in progress (a
    request or an engine batch), so a retired version is shut down only once it is idle."""

    version: CheckpointVersion
    formatter: PromptFormatter
    generator: CritiqueGenerator
    scorer: RewardScorer
    layout: str = "two"  # the engine layout it is served on (factory.served_layout)
    generator_dtype: str | None = None  # its critiques' dtype, `auto` resolved (None: unknown)
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

    @property
    def warnings(self) -> list[str]:
        """What every answer of this version says about it."""
        return [] if self.manifest.reward_head_trained else [UNTRAINED_WARNING]

    def shutdown(self) -> None:
        for engine in (self.generator, self.scorer):
            try:
                engine.shutdown()
            except Exception:  # shutting down must not raise over another error
                log.exception("engine shutdown failed")


async def load_runtime(settings: Settings, version: str | None = None) -> ModelRuntime:
    """Validate the checkpoint, then start its engines (in a worker thread: engine start-up
    blocks for tens of seconds and the event loop must keep answering /health)."""
    root = CheckpointRoot(settings.checkpoint_root)
    ckpt = await asyncio.to_thread(
        root.resolve, version or settings.model_version, settings.verify_hashes
    )
    log.info("loading checkpoint %s from %s", ckpt.manifest.model_version, ckpt.path)
    config = settings.engine_config()
    formatter = await asyncio.to_thread(load_formatter, ckpt, config)
    generator, scorer = await load_engines(ckpt, config, formatter)
    served = for_version(ckpt, config)
    dtype = await asyncio.to_thread(generator_dtype, served)
    return ModelRuntime(ckpt, formatter, generator, scorer, served.engine_layout, dtype)
