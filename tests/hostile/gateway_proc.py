"""A gateway process (service.server.serve) on fake engines that behave like vLLM's where a
shutdown is concerned: each loaded version owns an engine child process that ignores SIGTERM
(as a compiling engine core does), and its load blocks a thread until that child is up, or
dies. Delays come from the environment: FAKE_LOAD_S (first load), FAKE_RELOAD_S (later loads),
FAKE_WARM_S (the warm-up forward), FAKE_GEN_S (every later forward).

    python -m tests.hostile.gateway_proc      # with CRM_* settings in the environment
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from service.checkpoint.store import CheckpointRoot
from service.engines.base import Critique, EngineStats, SamplingSpec
from service.model.runtime import ModelRuntime
from service.server import serve
from service.settings import Settings
from tests.fakes import FakeGenerator, fake_runtime

ENGINE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
_loads = 0


def _env(name: str) -> float:
    return float(os.environ.get(name, "0"))


class EngineProcess:
    """The child process an engine runs in."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ENGINE])

    def wait_started(self, seconds: float) -> None:
        """Block (a thread) while the engine 'starts'; fail if its process dies meanwhile."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return
        raise RuntimeError("engine core process died during start-up")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class EngineGenerator(FakeGenerator):
    engine: EngineProcess | None = None
    warm_s: float = 0.0
    gen_s: float = 0.0

    async def generate(
        self, prompts: Sequence[list[int]], specs: Sequence[SamplingSpec]
    ) -> tuple[list[list[Critique]], EngineStats]:
        await asyncio.sleep(self.gen_s if self.calls else self.warm_s)
        return await super().generate(prompts, specs)

    def shutdown(self) -> None:
        super().shutdown()
        if self.engine is not None:
            self.engine.stop()


async def load(settings: Settings, version: str | None = None) -> ModelRuntime:
    global _loads
    _loads += 1
    seconds = _env("FAKE_LOAD_S" if _loads == 1 else "FAKE_RELOAD_S")
    resolved = await asyncio.to_thread(CheckpointRoot(settings.checkpoint_root).resolve, version)
    engine = EngineProcess()
    await asyncio.to_thread(engine.wait_started, seconds)
    runtime = await asyncio.to_thread(fake_runtime, resolved, settings)
    runtime.generator = EngineGenerator(
        engine=engine, warm_s=_env("FAKE_WARM_S"), gen_s=_env("FAKE_GEN_S")
    )
    return runtime


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(serve(Settings(), load))
