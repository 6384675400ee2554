"""The model's lifecycle: load a version beside the served one, warm it up, swap it in, retire
the old one once idle; a failed load keeps the old one serving."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from service.checkpoint.store import CheckpointError, CheckpointRoot
from service.contract.formatting import Message
from service.engines.base import SamplingSpec
from service.engines.dtype import generator_dtype
from service.engines.processes import reap_exited
from service.model.errors import NotReady, ShuttingDown
from service.model.health import Health, RunBatch, forward
from service.model.memory import release_free_heap
from service.model.runtime import ModelRuntime
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

RuntimeLoader = Callable[[Settings, "str | None"], Awaitable[ModelRuntime]]
T = TypeVar("T")

WARMUP_ITEMS: list[tuple[str | Sequence[Message], str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "Write a haiku about rain.",
        "Rain taps the window / grey light settles on the town / tea cools",
    ),
]

_LATE_SHUTDOWNS: set[asyncio.Future[None]] = set()  # held so the tasks are not collected


def _shutdown_late_runtime(task: asyncio.Future[Any]) -> None:
    """Done-callback of an abandoned load: shut down the engines if they came up after all."""
    if task.cancelled() or task.exception() is not None:
        return
    runtime = task.result()
    if isinstance(runtime, ModelRuntime):
        log.info("shutting down %s, loaded after the shutdown began", runtime.model_version)
        # Engine shutdown blocks for seconds: not on the event loop, which still answers.
        late = asyncio.ensure_future(asyncio.to_thread(runtime.shutdown))
        _LATE_SHUTDOWNS.add(late)
        late.add_done_callback(_LATE_SHUTDOWNS.discard)


@dataclass(frozen=True)
class ReloadOutcome:
    status: Literal["reloaded", "unchanged"]
    model_version: str
    previous: str | None


class ModelManager:
    """Owns the served runtime (and its replacement on reload) and the model's health."""

    def __init__(
        self, settings: Settings, metrics: Metrics, loader: RuntimeLoader, run: RunBatch
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
        self._run = run
        self.runtime: ModelRuntime | None = None
        self.health = Health(metrics, run, lambda: self.runtime, settings.health_interval_s)
        # Follow the checkpoint root's `current` pointer unless a version is pinned.
        self.follow_current = settings.model_version is None
        self.last_reload: dict[str, object] | None = None
        # The generator's dtype with `auto` resolved (it imports torch): known once started.
        self.generator_dtype = settings.generator_dtype
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        # Set on SIGTERM: loads and warm-ups in progress give up, nothing new becomes ready.
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.generator_dtype = await asyncio.to_thread(
            generator_dtype, self.settings.engine_config()
        )

    async def serve_first(self) -> None:
        """Load and warm the first version; /ready turns 200 when this is done."""
        t0 = time.perf_counter()
        try:
            await self.reload(self.settings.model_version)
            log.info("ready after %.1fs", time.perf_counter() - t0)
        except ShuttingDown:
            log.info("shutdown during start-up: the first load was abandoned")
        except Exception as exc:
            self.health.load_failed(f"model load failed: {type(exc).__name__}: {exc}")
            log.exception("model load failed")

    def pin(self, version: str | None) -> None:
        """Serve `version` from now on, or follow the root's `current` pointer (None)."""
        self.follow_current = version is None

    def require_runtime(self) -> ModelRuntime:
        if self.runtime is None or not self.health.ready:
            raise NotReady(self.health.error or f"model is {self.health.state.value}")
        return self.runtime

    def begin_drain(self) -> None:
        """Abandon any load in progress; nothing new becomes ready."""
        self._stopping.set()
        self.health.draining()

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.shutdown)
            self.runtime = None

    async def warm_up(self, runtime: ModelRuntime) -> None:
        """A real request through both engines of `runtime`, before it takes traffic."""
        d = runtime.manifest.sampling
        spec = SamplingSpec(
            n=max(min(d.num_critiques, 2), 1),
            temperature=d.temperature,
            top_p=d.top_p,
            max_tokens=min(d.max_critique_tokens, 16),
        )
        await forward(runtime, self._run, WARMUP_ITEMS, spec)

    async def reload(self, version: str | None = None) -> ReloadOutcome:
        """Load `version` (or `current`) beside the served one, warm it, swap it in, then retire
        the old one once its in-flight work is done. A failed load keeps the old one serving;
        reloading the served version is a no-op; a shutdown abandons a load in progress."""
        async with self._reload_lock:
            if self._stopping.is_set():
                raise ShuttingDown("service is shutting down: no reload")
            previous = self.runtime.model_version if self.runtime is not None else None
            target = version
            if target is None:
                root = CheckpointRoot(self.settings.checkpoint_root)
                target = await asyncio.to_thread(root.current_version)
            if target is not None and target == previous:
                self.metrics.reloads.labels("unchanged").inc()
                return ReloadOutcome("unchanged", target, previous)
            t0 = time.perf_counter()
            try:
                runtime = await self._unless_stopping(self.loader(self.settings, target))
                try:
                    if self.settings.warmup:
                        if previous is None:
                            self.health.warming()
                        await self._unless_stopping(self.warm_up(runtime), cancel=True)
                    if self._stopping.is_set():
                        raise ShuttingDown("service is shutting down: load abandoned")
                except BaseException:
                    await asyncio.shield(asyncio.to_thread(runtime.shutdown))
                    raise
            except Exception as exc:
                self._record_failed_load(target, previous, exc)
                raise
            old, self.runtime = self.runtime, runtime
            if runtime.generator_dtype is not None:  # a format-1 checkpoint may fall back
                self.generator_dtype = runtime.generator_dtype
            m = runtime.manifest
            self.metrics.set_model(
                m.model_version, m.base_model, m.reward_head_trained, runtime.layout
            )
            self.health.serving()
            self.metrics.reloads.labels("ok").inc()
            self.last_reload = {
                "result": "ok",
                "version": runtime.model_version,
                "previous": previous,
                "seconds": round(time.perf_counter() - t0, 3),
                "at": time.time(),
            }
            log.info(
                "now serving %s (was %s; load + warm-up %.1fs)",
                runtime.model_version,
                previous,
                time.perf_counter() - t0,
            )
            if old is not None:
                task = asyncio.create_task(self._retire(old), name=f"retire-{old.model_version}")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return ReloadOutcome("reloaded", runtime.model_version, previous)

    async def _unless_stopping(self, work: Awaitable[T], *, cancel: bool = False) -> T:
        """Await `work`, or raise ShuttingDown as soon as a shutdown begins; the abandoned work
        is cancelled (`cancel`), or else left to finish and shut down the engines it started:
        an engine start cannot be interrupted inside its thread, and the process's exit reaps
        its engine processes in any case."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                if cancel:
                    task.cancel()
                else:
                    task.add_done_callback(_shutdown_late_runtime)
        if task.done():
            return task.result()
        raise ShuttingDown("service is shutting down: load abandoned")

    def _record_failed_load(self, target: str | None, previous: str | None, exc: Exception) -> None:
        if isinstance(exc, ShuttingDown):
            log.info("loading %s abandoned: shutting down", target)
            return
        self.metrics.reloads.labels("failed").inc()
        self.last_reload = {
            "result": "failed",
            "version": target,
            "error": f"{type(exc).__name__}: {exc}",
            "at": time.time(),
        }
        # A bad version id is usually a caller's typo: warn; an engine failure is ours.
        level = logging.WARNING if isinstance(exc, CheckpointError) else logging.ERROR
        log.log(level, "loading %s failed, still serving %s: %s", target, previous, exc)

    async def _retire(self, old: ModelRuntime) -> None:
        """Free a replaced version once every request and batch that started on it is done."""
        await old.wait_idle()
        await asyncio.to_thread(old.shutdown)
        version = old.model_version
        del old  # the last reference: its tokenizers and engine clients go before the trim
        await asyncio.to_thread(release_free_heap)
        await asyncio.to_thread(reap_exited)
        log.info("retired %s", version)
