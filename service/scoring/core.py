"""A scoring request: validate -> encode -> cache lookup -> single-flight -> batcher -> cache
write, wholly on one model version."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from service.cache.store import ResultCache, cache_key
from service.contract.formatting import EncodedItem, InputTooLongError, Message, normalize_prompt
from service.contract.options import OptionLimits, ScoreOptions
from service.engines.base import SamplingSpec
from service.model.errors import ShuttingDown
from service.model.manager import ModelManager
from service.model.runtime import ModelRuntime
from service.observability.metrics import Metrics
from service.scoring.admission import Admission
from service.scoring.batcher import MicroBatcher
from service.scoring.errors import DeadlineExceeded, EngineFailure, InvalidRequest
from service.scoring.runner import BatchRunner, ItemResult, WorkItem
from service.scoring.structured import verdict_room
from service.settings import Settings

log = logging.getLogger(__name__)

Item = tuple["str | Sequence[Message]", str]
T = TypeVar("T")
# How a request names item i's "prompt" or "response" in its errors and warnings.
FieldNamer = Callable[[int, str], str]


def item_field(i: int, name: str) -> str:
    """/score's own names: items[i].prompt, items[i].response."""
    return f"items[{i}].{name}"


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


class RewardService:
    """Scores items on the model that `model` serves, through the batcher and the cache."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        cache: ResultCache,
        model: ModelManager,
        runner: BatchRunner,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = cache
        self.model = model
        self.runner = runner
        self.limits: OptionLimits = settings.option_limits()
        # Requests in progress, for the drain on shutdown.
        self.inflight = 0
        self._no_inflight = asyncio.Event()
        self._no_inflight.set()
        self.batcher: MicroBatcher[WorkItem, ItemResult] = MicroBatcher(
            runner,
            max_items=settings.batch_max_items,
            max_tokens=settings.batch_max_tokens,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            cost=lambda w: w.cost,
            on_depth=metrics.queue_depth.set,
            on_abandoned=metrics.abandoned_items.inc,
        )
        metrics.queue_limit.set(settings.max_queue_items)
        self.admission = Admission(
            self.batcher,
            runner,
            metrics,
            max_queue_items=settings.max_queue_items,
            batch_max_items=settings.batch_max_items,
        )
        self._inflight: dict[str, _Shared] = {}

    @property
    def runtime(self) -> ModelRuntime | None:
        """The served runtime, if any."""
        return self.model.runtime

    # ---- lifecycle
    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.model.stop()
        await self.cache.close()

    def begin_drain(self) -> None:
        """Stop taking scoring requests (/ready turns 503) and abandon any load in progress;
        requests in flight go on."""
        self.model.begin_drain()

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

    # ---- scoring
    async def score(
        self,
        items: Sequence[Item],
        opts: ScoreOptions,
        deadline: float | None = None,
        runtime: ModelRuntime | None = None,
        field: FieldNamer = item_field,
    ) -> ScoreOutcome:
        """Score items, wholly on one model version (`runtime`, by default the served one);
        `deadline` is an event-loop time after which the request gives up. Errors and warnings
        name item i's prompt or response by `field` (the caller's own request fields)."""
        runtime = runtime or self.model.require_runtime()
        with self.tracked(), runtime.use():
            return await self._score(items, opts, deadline, runtime, field)

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        """Count a request in flight for the drain (a /refine counts once for all its rounds)."""
        self.inflight += 1
        self._no_inflight.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._no_inflight.set()

    async def _score(
        self,
        items: Sequence[Item],
        opts: ScoreOptions,
        deadline: float | None,
        runtime: ModelRuntime,
        field: FieldNamer,
    ) -> ScoreOutcome:
        self._validate(items, opts, runtime, field)
        # Refuse at once, before any tokenising or cache round trip, when the queue cannot take
        # every item (some might have been cache hits: under overload that is the price of a
        # 429 that costs nothing). The exact check after the cache lookup still holds.
        self.admission.admit(len(items))
        t0 = time.perf_counter()
        encoded = await asyncio.to_thread(self._encode_all, runtime, items, opts, field)
        self.metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - t0)
        room = verdict_room(runtime.formatter) if opts.structured else 0
        spec = SamplingSpec.for_options(opts, room)
        m = runtime.manifest
        templates_digest = m.templates.digest()
        keys = [
            cache_key(
                model_version=m.model_version,
                templates_digest=templates_digest,
                messages=normalize_prompt(prompt),
                response=response,
                options=opts,
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
            self.admission.admit(len(fresh))
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
        warnings = runtime.warnings
        warnings += [
            f"{field(i, 'prompt')} was left-truncated to fit the model context"
            for i, s in enumerate(scored)
            if s.truncated
        ]
        return ScoreOutcome(runtime.model_version, scored, warnings)

    async def within_deadline(self, work: Awaitable[T], deadline: float | None, what: str) -> T:
        """Engine work outside the batcher (a revision, a judgment), bounded by the request's
        deadline like queued items are: 504 past it, counted as a deadline failure."""
        timeout = None
        if deadline is not None:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
        try:
            return await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            self.metrics.request_failures.labels("deadline").inc()
            raise DeadlineExceeded(f"{what} not ready within the request deadline") from None

    def _validate(
        self, items: Sequence[Item], opts: ScoreOptions, runtime: ModelRuntime, field: FieldNamer
    ) -> None:
        if len(items) > self.settings.max_items_per_request:
            raise InvalidRequest(
                "items", f"at most {self.settings.max_items_per_request} items per request"
            )
        for idx, (prompt, response) in enumerate(items):
            try:  # O(1) per item: over-long text never reaches the tokenizer
                runtime.formatter.check_length(prompt, response, opts.truncate_prompt)
            except InputTooLongError as exc:
                raise InvalidRequest(field(idx, exc.field), str(exc)) from exc

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
                    self.model.health.engine_error()
                    self.metrics.request_failures.labels("engine_error").inc()
                    raise EngineFailure(f"{type(exc).__name__}: {exc}") from exc
        finally:
            for sh in shares:
                sh.waiters -= 1
                if sh.waiters == 0 and not sh.task.done():
                    sh.task.cancel()
                    self._forget(sh)

    def _encode_all(
        self, runtime: ModelRuntime, items: Sequence[Item], opts: ScoreOptions, field: FieldNamer
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
                raise InvalidRequest(field(idx, exc.field), str(exc)) from exc
        return out
