"""The served model's state, and the checks that change it: a watch on the engine processes,
and a real tiny forward (the same one the warm-up runs) after an engine error."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence

from service.contract.formatting import EncodedItem, Message
from service.engines.base import SamplingSpec
from service.model.runtime import ModelRuntime
from service.observability.metrics import Metrics

log = logging.getLogger(__name__)

# Runs encoded items through both engines of a runtime (the scoring core's batch runner).
RunBatch = Callable[[ModelRuntime, Sequence[EncodedItem], SamplingSpec], Awaitable[object]]
Items = Sequence[tuple["str | Sequence[Message]", str]]

PROBE_ITEMS: Items = [("Say hi.", "Hi!")]
PROBE_SPEC = SamplingSpec(n=1, temperature=1.0, top_p=1.0, max_tokens=4)


class ModelState(str, enum.Enum):
    """Where the service is in its life; /ready and /info report the value."""

    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class EngineState(str, enum.Enum):
    """What the last engine work said: fine, a batch failed (the next /health runs a real
    forward), or the engines are dead (the process exits for the orchestrator)."""

    OK = "ok"
    SUSPECT = "suspect"
    DEAD = "dead"


async def forward(runtime: ModelRuntime, run: RunBatch, items: Items, spec: SamplingSpec) -> None:
    """A real request through both engines of `runtime`: the warm-up and the health probe."""

    def encode() -> list[EncodedItem]:
        return [
            runtime.formatter.encode_item(
                prompt, response, max_critique_tokens=spec.max_tokens, num_critiques=spec.n
            )
            for prompt, response in items
        ]

    encoded = await asyncio.to_thread(encode)
    with runtime.use():
        await run(runtime, encoded, spec)


class Health:
    """The model's and the engines' state; it changes only through the methods below."""

    def __init__(
        self,
        metrics: Metrics,
        run: RunBatch,
        current: Callable[[], ModelRuntime | None],
        interval_s: float,
    ) -> None:
        self.metrics = metrics
        self._run = run
        self._current = current
        self.interval_s = interval_s
        self._state = ModelState.LOADING
        self._engines = EngineState.OK
        self._error: str | None = None
        # Called when the engines are dead, to let the orchestrator restart the process.
        self.on_fatal: Callable[[], None] | None = None

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def suspect(self) -> bool:
        return self._engines is EngineState.SUSPECT

    @property
    def dead(self) -> bool:
        return self._engines is EngineState.DEAD

    @property
    def ready(self) -> bool:
        return self._state is ModelState.READY

    # ---- transitions
    def warming(self) -> None:
        self._state = ModelState.WARMING

    def serving(self) -> None:
        """A version was loaded and warmed up."""
        self._state = ModelState.READY

    def load_failed(self, message: str) -> None:
        self._state = ModelState.FAILED
        self._error = message

    def draining(self) -> None:
        if self._state is not ModelState.FAILED:
            self._state = ModelState.DRAINING
            self._error = "shutting down"

    def stopped(self) -> None:
        """The app is stopping: nothing is ready any more."""
        if self._state is ModelState.READY:
            self._state = ModelState.LOADING

    def engine_error(self) -> None:
        """An engine batch failed: check with a real forward before trusting the engines."""
        if self._engines is EngineState.OK:
            self._engines = EngineState.SUSPECT

    def engines_dead(self, exc: BaseException) -> None:
        self._engines = EngineState.DEAD
        self._state = ModelState.FAILED
        self._error = f"engine failed its health check: {type(exc).__name__}: {exc}"
        self.metrics.engine_errors.labels(stage="health").inc()
        log.error("%s; exiting so the orchestrator restarts the process", self._error)
        if self.on_fatal is not None:
            self.on_fatal()

    # ---- checks
    async def probe(self, timeout_s: float = 120.0) -> bool:
        """A real tiny forward through both engines; a failure marks the engines dead."""
        runtime = self._current()
        if runtime is None:
            return False
        try:
            await asyncio.wait_for(self._tiny_forward(runtime), timeout_s)
        except Exception as exc:
            self.engines_dead(exc)
            return False
        if self._engines is EngineState.SUSPECT:
            self._engines = EngineState.OK
        return True

    async def _tiny_forward(self, runtime: ModelRuntime) -> None:
        await runtime.generator.check_health()
        await runtime.scorer.check_health()
        await forward(runtime, self._run, PROBE_ITEMS, PROBE_SPEC)

    async def monitor(self) -> None:
        """Watch the engine processes; when one has died, fail readiness and ask to exit."""
        interval = self.interval_s
        while interval > 0:
            await asyncio.sleep(interval)
            runtime = self._current()
            if runtime is None or not self.ready:
                continue
            try:
                await asyncio.wait_for(runtime.generator.check_health(), 30)
                await asyncio.wait_for(runtime.scorer.check_health(), 30)
            except Exception as exc:
                self.engines_dead(exc)
                return
