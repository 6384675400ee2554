"""App factory and lifespan: load -> warm up -> serve -> drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service.api.auth import KeySource
from service.api.errors import install_error_handlers
from service.api.middleware import BodyLimit, RequestMetrics
from service.api.routes import router
from service.cache.store import MemoryCache, RedisCache, ResultCache
from service.model.manager import ModelManager, RuntimeLoader
from service.model.runtime import load_runtime
from service.model.watcher import ReloadWatcher
from service.observability.metrics import Metrics
from service.scoring.core import RewardService
from service.scoring.runner import BatchRunner
from service.settings import Settings

log = logging.getLogger(__name__)


def make_cache(settings: Settings, metrics: Metrics) -> ResultCache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url, settings.redis_timeout_s, settings.cache_ttl_s, metrics
        )
    return MemoryCache(settings.cache_max_entries)


def create_app(settings: Settings | None = None, loader: RuntimeLoader | None = None) -> FastAPI:
    """Build the gateway. `loader` replaces the real engine loader (tests of gateway logic)."""
    settings = settings or Settings()
    metrics = Metrics()
    load = loader or load_runtime

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("settings: %s", settings.masked())
        app.state.keys.state()  # logs whether auth is open, keyed or denying everything
        runner = BatchRunner(metrics)
        model = ModelManager(settings, metrics, load, runner.run_encoded)
        await model.start()
        service = RewardService(settings, metrics, make_cache(settings, metrics), model, runner)
        app.state.model = model
        app.state.service = service
        watcher = ReloadWatcher(model)
        app.state.watcher = watcher
        app.state.loop = asyncio.get_running_loop()
        model.health.on_fatal = getattr(app.state, "on_fatal", None)
        service.start()
        monitor = asyncio.create_task(model.health.monitor(), name="engine-monitor")
        loading = asyncio.create_task(model.serve_first(), name="model-load")
        app.state.loading = loading
        watcher.start()
        try:
            yield
        finally:
            monitor.cancel()
            await watcher.stop()
            model.health.stopped()
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
