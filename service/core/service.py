"""Request orchestration: encode -> cache lookup -> de-duplicate -> micro-batcher -> cache write."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from service.cache.store import ResultCache, cache_key
from service.checkpoint.store import CheckpointError, CheckpointRoot
from service.core.batcher import MicroBatcher
from service.core.errors import (
    DeadlineExceeded,
    EngineFailure,
    InvalidRequest,
    NotReady,
    Overloaded,
    ShuttingDown,
)
from service.core.formatting import EncodedItem, InputTooLongError, Message, normalize_prompt
from service.core.pipeline import BatchPipeline, ItemResult, WorkItem
from service.engines.base import SamplingSpec
from service.engines.factory import ModelRuntime
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

UNTRAINED_WARNING = (
    "the served reward head is untrained (bootstrap checkpoint): rewards carry no preference "
    "signal yet; publish a trained checkpoint"
)


@dataclass(frozen=True)
class ScoreOptions:
    """Resolved per-request parameters (defaults from the manifest, checked against limits)."""

    num_critiques: int
    temperature: float
    top_p: float
    max_critique_tokens: int
    truncate_prompt: bool = False
    use_cache: bool = True


@dataclass
class _Shared:
    """One in-flight item and how many requests are waiting for it."""

    task: asyncio.Future[ItemResult]
    key: str | None = None  # its cache key when other requests may share it
    waiters: int = 0


@dataclass(frozen=True)
class ScoredItem:
    result: ItemResult
    cached: bool
    truncated: bool


@dataclass(frozen=True)
class ScoreOutcome:
    model_version: str
    items: list[ScoredItem]
    warnings: list[str]


WARMUP_ITEMS: list[tuple[str | Sequence[Message], str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "Write a haiku about rain.",
        "Rain taps the window / grey light settles on the town / tea cools",
    ),
]

RuntimeLoader = Callable[[Settings, "str | None"], Awaitable[ModelRuntime]]
T = TypeVar("T")


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


class RewardService:
    """Owns the served model runtime (and its replacement on reload), the batcher and the cache."""

    def __init__(
        self, settings: Settings, metrics: Metrics, cache: ResultCache, loader: RuntimeLoader
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = cache
        self.loader = loader
        self.runtime: ModelRuntime | None = None
        # Follow the checkpoint root's `current` pointer unless a version is pinned.
        self.follow_current = settings.model_version is None
        self.last_reload: dict[str, object] | None = None
        self._reload_lock = asyncio.Lock()
        # Requests in progress, for the drain on shutdown.
        self.inflight = 0
        self._no_inflight = asyncio.Event()
        self._no_inflight.set()
        # Set when an engine batch failed: the next /health runs a real tiny forward.
        self.engine_suspect = False
        self.engine_dead = False
        # Called when the engines are dead, to let the orchestrator restart the process.
        self.on_fatal: Callable[[], None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.state: Literal["loading", "warming", "ready", "draining", "failed"] = "loading"
        self.error: str | None = None
        self.batcher_pipeline = BatchPipeline(metrics)
        self.batcher: MicroBatcher[WorkItem, ItemResult] = MicroBatcher(
            self.batcher_pipeline,
            max_items=settings.batch_max_items,
            max_tokens=settings.batch_max_tokens,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            cost=lambda w: w.cost,
            on_depth=metrics.queue_depth.set,
            on_abandoned=metrics.abandoned_items.inc,
        )
        # Set on SIGTERM: loads and warm-ups in progress give up, nothing new becomes ready.
        self._stopping = asyncio.Event()
        self._inflight: dict[str, _Shared] = {}

    # ---- lifecycle
    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        for task in list(self._retiring):
            task.cancel()
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.shutdown)
            self.runtime = None
        await self.cache.close()

    # ---- loading and hot reload
    async def warm_up(self, runtime: ModelRuntime) -> None:
        """A real request through both engines of `runtime`, before it takes traffic."""
        d = runtime.manifest.sampling
        opts = ScoreOptions(
            num_critiques=max(min(d.num_critiques, 2), 1),
            temperature=d.temperature,
            top_p=d.top_p,
            max_critique_tokens=min(d.max_critique_tokens, 16),
        )
        encoded = await asyncio.to_thread(self._encode_all, runtime, WARMUP_ITEMS, opts)
        spec = SamplingSpec(
            opts.num_critiques, opts.temperature, opts.top_p, opts.max_critique_tokens
        )
        with runtime.use():
            await self.batcher_pipeline.run(runtime, [WorkItem(runtime, e, spec) for e in encoded])

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
                            self.state = "warming"
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
            m = runtime.manifest
            self.metrics.set_model(m.model_version, m.base_model, m.reward_head_trained)
            self.state = "ready"
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
        log.info("retired %s", old.model_version)

    def require_runtime(self) -> ModelRuntime:
        if self.runtime is None or self.state != "ready":
            raise NotReady(self.error or f"model is {self.state}")
        return self.runtime

    def model_warnings(self, runtime: ModelRuntime) -> list[str]:
        return [] if runtime.manifest.reward_head_trained else [UNTRAINED_WARNING]

    # ---- parameters
    def resolve_options(
        self,
        runtime: ModelRuntime,
        *,
        num_critiques: int | None,
        temperature: float | None,
        top_p: float | None,
        max_critique_tokens: int | None,
        truncate_prompt: bool = False,
        use_cache: bool = True,
        field_m: str = "num_critiques",
    ) -> ScoreOptions:
        s, d = self.settings, runtime.manifest.sampling
        opts = ScoreOptions(
            num_critiques=d.num_critiques if num_critiques is None else num_critiques,
            temperature=d.temperature if temperature is None else temperature,
            top_p=d.top_p if top_p is None else top_p,
            max_critique_tokens=(
                d.max_critique_tokens if max_critique_tokens is None else max_critique_tokens
            ),
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
        )
        if opts.num_critiques > s.max_num_critiques:
            raise InvalidRequest(field_m, f"must be at most {s.max_num_critiques}")
        if opts.temperature > s.max_temperature:
            raise InvalidRequest("temperature", f"must be at most {s.max_temperature}")
        if opts.max_critique_tokens > s.max_critique_tokens:
            raise InvalidRequest("max_critique_tokens", f"must be at most {s.max_critique_tokens}")
        return opts

    # ---- scoring
    async def score(
        self,
        items: Sequence[tuple[str | Sequence[Message], str]],
        opts: ScoreOptions,
        deadline: float | None = None,
        runtime: ModelRuntime | None = None,
    ) -> ScoreOutcome:
        """Score items, wholly on one model version (`runtime`, by default the served one);
        `deadline` is an event-loop time after which the request gives up."""
        runtime = runtime or self.require_runtime()
        self.inflight += 1
        self._no_inflight.clear()
        try:
            with runtime.use():
                return await self._score(items, opts, deadline, runtime)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._no_inflight.set()

    # ---- shutdown and engine health
    def begin_drain(self) -> None:
        """Stop taking scoring requests (/ready turns 503) and abandon any load in progress;
        requests in flight go on."""
        self._stopping.set()
        if self.state != "failed":
            self.state = "draining"
            self.error = "shutting down"

    def abort_inflight(self) -> None:
        """After the drain timeout: fail what is still queued or running with a retryable 503,
        so each caller gets a JSON answer before the server closes its connection."""
        self.batcher.fail_all(ShuttingDown("service is shutting down; retry on another replica"))

    async def wait_drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._no_inflight.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def probe(self, timeout_s: float = 120.0) -> bool:
        """A real tiny forward through both engines; a failure marks the engines dead."""
        runtime = self.runtime
        if runtime is None:
            return False
        try:
            await asyncio.wait_for(self._tiny_forward(runtime), timeout_s)
        except Exception as exc:
            self._engines_dead(exc)
            return False
        self.engine_suspect = False
        return True

    async def _tiny_forward(self, runtime: ModelRuntime) -> None:
        await runtime.generator.check_health()
        await runtime.scorer.check_health()
        encoded = await asyncio.to_thread(
            runtime.formatter.encode_item, "Say hi.", "Hi!", max_critique_tokens=4, num_critiques=1
        )
        spec = SamplingSpec(n=1, temperature=1.0, top_p=1.0, max_tokens=4)
        with runtime.use():
            await self.batcher_pipeline.run(runtime, [WorkItem(runtime, encoded, spec)])

    async def monitor(self) -> None:
        """Watch the engine processes; when one has died, fail readiness and ask to exit."""
        interval = self.settings.health_interval_s
        while interval > 0:
            await asyncio.sleep(interval)
            runtime = self.runtime
            if runtime is None or self.state != "ready":
                continue
            try:
                await asyncio.wait_for(runtime.generator.check_health(), 30)
                await asyncio.wait_for(runtime.scorer.check_health(), 30)
            except Exception as exc:
                self._engines_dead(exc)
                return

    def _engines_dead(self, exc: BaseException) -> None:
        self.engine_dead = True
        self.state = "failed"
        self.error = f"engine failed its health check: {type(exc).__name__}: {exc}"
        self.metrics.engine_errors.labels(stage="health").inc()
        log.error("%s; exiting so the orchestrator restarts the process", self.error)
        if self.on_fatal is not None:
            self.on_fatal()

    async def _score(
        self,
        items: Sequence[tuple[str | Sequence[Message], str]],
        opts: ScoreOptions,
        deadline: float | None,
        runtime: ModelRuntime,
    ) -> ScoreOutcome:
        if len(items) > self.settings.max_items_per_request:
            raise InvalidRequest(
                "items", f"at most {self.settings.max_items_per_request} items per request"
            )
        for idx, (prompt, response) in enumerate(items):
            try:  # O(1) per item: over-long text never reaches the tokenizer
                runtime.formatter.check_length(prompt, response, opts.truncate_prompt)
            except InputTooLongError as exc:
                raise InvalidRequest(f"items[{idx}].{exc.field}", str(exc)) from exc
        # Refuse at once, before any tokenising or cache round trip, when the queue cannot take
        # every item (some might have been cache hits: under overload that is the price of a
        # 429 that costs nothing). The exact check after the cache lookup still holds.
        self._admit(len(items))
        t0 = time.perf_counter()
        encoded = await asyncio.to_thread(self._encode_all, runtime, items, opts)
        self.metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - t0)
        spec = SamplingSpec(
            n=opts.num_critiques,
            temperature=opts.temperature,
            top_p=opts.top_p,
            max_tokens=opts.max_critique_tokens,
        )
        m = runtime.manifest
        templates_digest = m.templates.digest()
        keys = [
            cache_key(
                model_version=m.model_version,
                templates_digest=templates_digest,
                messages=normalize_prompt(prompt),
                response=response,
                num_critiques=opts.num_critiques,
                temperature=opts.temperature,
                top_p=opts.top_p,
                max_critique_tokens=opts.max_critique_tokens,
                truncate_prompt=opts.truncate_prompt,
            )
            for prompt, response in items
        ]
        backend = self.cache.backend
        raw = await self.cache.get_many(keys) if opts.use_cache else [None] * len(keys)
        hits = [self._decode_hit(h, opts.num_critiques) for h in raw]
        fresh = [
            i
            for i, h in enumerate(hits)
            if h is None and not (opts.use_cache and keys[i] in self._inflight)
        ]
        # No await from here until every item is queued: admission and queueing are atomic.
        if fresh:
            self._admit(len(fresh))
        shares: dict[int, _Shared] = {}
        for idx, (key, hit) in enumerate(zip(keys, hits, strict=True)):
            if hit is not None:
                continue
            shared = self._inflight.get(key) if opts.use_cache else None
            if shared is None:
                work = WorkItem(runtime=runtime, encoded=encoded[idx], spec=spec)
                task = self.batcher.enqueue(work)
                shared = _Shared(task, key if opts.use_cache else None)
                if shared.key is not None:
                    self._inflight[key] = shared
                    task.add_done_callback(functools.partial(self._forget, shared))
            shares[idx] = shared
        if opts.use_cache:
            self.metrics.cache_hits.labels(backend).inc(len(keys) - len(shares))
            self.metrics.cache_misses.labels(backend).inc(len(shares))
        await self._wait(list({id(x): x for x in shares.values()}.values()), deadline)
        futures = {idx: sh.task for idx, sh in shares.items()}
        computed: list[tuple[str, ItemResult]] = []

        scored: list[ScoredItem] = []
        for idx, (key, hit) in enumerate(zip(keys, hits, strict=True)):
            if hit is not None:
                result, cached = hit, True
            else:
                result, cached = futures[idx].result(), False
                if opts.use_cache and all(k != key for k, _ in computed):
                    computed.append((key, result))
            self.metrics.reward.observe(result.reward)
            self.metrics.items.labels(str(cached).lower()).inc()
            scored.append(ScoredItem(result, cached, encoded[idx].truncated))
        if computed:
            await self.cache.set_many([(k, r.to_json()) for k, r in computed])
        warnings = self.model_warnings(runtime)
        warnings += [
            f"items[{i}].prompt was left-truncated to fit the model context"
            for i, s in enumerate(scored)
            if s.truncated
        ]
        return ScoreOutcome(runtime.model_version, scored, warnings)

    def _admit(self, n: int) -> None:
        """429 unless `n` more items fit the queue."""
        depth = self.batcher.depth
        if depth + n > self.settings.max_queue_items:
            self.metrics.request_failures.labels("queue_full").inc()
            raise Overloaded(
                f"queue full ({depth} items waiting, {n} more asked for, limit "
                f"{self.settings.max_queue_items})",
                self.retry_after_s(depth),
            )

    def _decode_hit(self, raw: object, num_critiques: int) -> ItemResult | None:
        """A cached value as a result; anything else (corrupt, foreign, non-finite, the wrong
        number of critiques) is a counted miss, and the fresh result overwrites it."""
        if raw is None:
            return None
        try:
            result = ItemResult.from_json(raw)
            if len(result.critiques) != num_critiques:
                raise ValueError(f"{len(result.critiques)} critiques, {num_critiques} asked for")
        except (ValueError, OverflowError, RecursionError) as exc:
            self.metrics.cache_errors.labels(op="decode").inc()
            log.warning("ignoring a malformed cache entry: %s", exc)
            return None
        return result

    def _forget(self, shared: _Shared, _task: object = None) -> None:
        """Stop offering an item to new identical requests (done, or cancelled)."""
        if shared.key is not None and self._inflight.get(shared.key) is shared:
            del self._inflight[shared.key]

    async def _wait(self, shares: list[_Shared], deadline: float | None) -> None:
        """Wait for this request's items. Items are shared with concurrent identical requests;
        when the last request waiting for an item leaves (deadline, disconnect), the item is
        cancelled, which drops it from the batcher's queue if it has not started."""
        for sh in shares:
            sh.waiters += 1
        loop = asyncio.get_running_loop()
        try:
            timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
            if shares:
                _done, pending = await asyncio.wait([sh.task for sh in shares], timeout=timeout)
                if pending:
                    self.metrics.request_failures.labels("deadline").inc()
                    raise DeadlineExceeded(
                        f"results not ready within the request deadline ({len(pending)} of "
                        f"{len(shares)} items pending); their queued work was dropped"
                    )
            for sh in shares:
                if sh.task.cancelled():
                    raise ShuttingDown("the item was cancelled (service shutting down)")
                exc = sh.task.exception()
                if isinstance(exc, ShuttingDown):
                    raise ShuttingDown(str(exc))
                if exc is not None:
                    self.engine_suspect = True
                    self.metrics.request_failures.labels("engine_error").inc()
                    raise EngineFailure(f"{type(exc).__name__}: {exc}") from exc
        finally:
            for sh in shares:
                sh.waiters -= 1
                if sh.waiters == 0 and not sh.task.done():
                    sh.task.cancel()
                    self._forget(sh)

    def retry_after_s(self, depth: int) -> int:
        """Seconds until the queue ahead of a new item has likely drained."""
        per_batch = self.batcher_pipeline.batch_seconds_ewma or 1.0
        batches = depth / max(self.settings.batch_max_items, 1) + 1
        return max(1, min(120, math.ceil(per_batch * batches)))

    def _encode_all(
        self,
        runtime: ModelRuntime,
        items: Sequence[tuple[str | Sequence[Message], str]],
        opts: ScoreOptions,
    ) -> list[EncodedItem]:
        out = []
        for idx, (prompt, response) in enumerate(items):
            try:
                out.append(
                    runtime.formatter.encode_item(
                        prompt,
                        response,
                        max_critique_tokens=opts.max_critique_tokens,
                        num_critiques=opts.num_critiques,
                        truncate_prompt=opts.truncate_prompt,
                    )
                )
            except InputTooLongError as exc:
                raise InvalidRequest(f"items[{idx}].{exc.field}", str(exc)) from exc
        return out
