"""App factory and lifespan: load -> warm up -> serve -> drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service.api.auth import KeySource
from service.api.errors import install_error_handlers
from service.api.middleware import BodyLimit, RequestMetrics
from service.api.routes import router
from service.cache.store import MemoryCache, RedisCache, ResultCache
from service.core.errors import ShuttingDown
from service.core.reload import ReloadWatcher
from service.core.service import RewardService, RuntimeLoader
from service.engines.factory import load_runtime
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


def make_cache(settings: Settings, metrics: Metrics) -> ResultCache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url, settings.redis_timeout_s, settings.cache_ttl_s, metrics
        )
    return MemoryCache(settings.cache_max_entries)


async def start_serving(service: RewardService) -> None:
    """Load and warm the first version; /ready turns 200 when this is done."""
    t0 = time.perf_counter()
    try:
        await service.reload(service.settings.model_version)
        log.info("ready after %.1fs", time.perf_counter() - t0)
    except ShuttingDown:
        log.info("shutdown during start-up: the first load was abandoned")
    except Exception as exc:
        service.state = "failed"
        service.error = f"model load failed: {type(exc).__name__}: {exc}"
        log.exception("model load failed")


def create_app(settings: Settings | None = None, loader: RuntimeLoader | None = None) -> FastAPI:
    """Build the gateway. `loader` replaces the real engine loader (tests of gateway logic)."""
    settings = settings or Settings()
    metrics = Metrics()
    load = loader or load_runtime

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("settings: %s", settings.masked())
        app.state.keys.state()  # logs whether auth is open, keyed or denying everything
        service = RewardService(settings, metrics, make_cache(settings, metrics), load)
        app.state.service = service
        watcher = ReloadWatcher(service)
        app.state.watcher = watcher
        app.state.loop = asyncio.get_running_loop()
        service.on_fatal = getattr(app.state, "on_fatal", None)
        service.start()
        monitor = asyncio.create_task(service.monitor(), name="engine-monitor")
        loading = asyncio.create_task(start_serving(service), name="model-load")
        app.state.loading = loading
        watcher.start()
        try:
            yield
        finally:
            monitor.cancel()
            await watcher.stop()
            service.state = "loading" if service.state == "ready" else service.state
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await service.stop()

    app = FastAPI(
        title="critic-rm",
        version="0.1.0",
        description="Critic-RM reward service: sampled critiques + reward head, averaged.",
        lifespan=lifespan,
        # Served by routes of our own, behind the API key once keys are configured.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.keys = KeySource.from_settings(settings)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(router)

    # Outermost first: refuse oversized bodies before anything reads them; count everything.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
        metrics=metrics,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
