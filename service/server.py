"""uvicorn with a graceful drain: on SIGTERM /ready turns 503 and new scoring requests get 503,
a load in progress is abandoned, requests in flight finish (up to CRM_DRAIN_TIMEOUT_S; those
still running then get a JSON 503 to retry), then uvicorn's normal shutdown runs, and no engine
process outlives the gateway."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.engines.processes import reap_descendants
from service.model.health import ModelState
from service.model.manager import RuntimeLoader
from service.model.memory import limit_arenas
from service.settings import Settings

log = logging.getLogger(__name__)

# After a drain timeout: how long the failed requests get to write their 503s.
ANSWER_GRACE_S = 5.0
# uvicorn's own shutdown after the drain: the connections of answered requests to close.
CLOSE_GRACE_S = ANSWER_GRACE_S + 5.0


class DrainingServer(uvicorn.Server):
    """A second signal skips the drain and what is left of uvicorn's graceful shutdown.

    Signals never reach uvicorn's own handler: it would re-raise the signal once the server
    stopped, and the process would die by it before ending its engine processes (and exit by
    SIGTERM instead of 0 after a clean drain)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, reap: bool = False) -> None:
        super().__init__(config)
        self.app = app
        self.reap = reap
        self._draining = False
        app.state.on_fatal = self.request_exit

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.reap:
            # Before the event loop closes: it waits for its worker threads, and an engine
            # start blocked in one of them ends only once its engine processes are gone.
            await asyncio.to_thread(reap_descendants)

    def request_exit(self) -> None:
        """Drain and exit, as on SIGTERM (used when the engines died)."""
        self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = getattr(self.app.state, "loop", None)
        if self._draining or loop is None or not hasattr(self.app.state, "service"):
            # A second signal, or one before the lifespan began (no engines yet): exit now.
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        # Signal handlers run between bytecodes of the main thread: hand over to the loop.
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        service = self.app.state.service
        timeout = self.app.state.settings.drain_timeout_s
        service.begin_drain()
        log.info("draining: %d requests in flight, up to %.0fs", service.inflight, timeout)
        if not await service.wait_drained(timeout):
            log.warning("drain timeout: failing %d requests still in flight", service.inflight)
            service.abort_inflight()
            await service.wait_drained(ANSWER_GRACE_S)
        self.should_exit = True


def serve(settings: Settings, loader: RuntimeLoader | None = None) -> int:
    """Run the gateway until it is told to stop; the exit status for the orchestrator."""
    limit_arenas(settings.malloc_arena_max)  # before any thread exists
    app = create_app(settings, loader)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Counted from the end of the drain (which bounds the requests themselves).
        timeout_graceful_shutdown=int(CLOSE_GRACE_S),
    )
    try:
        DrainingServer(config, app, reap=True).run()
    finally:
        # An engine that was still starting (or one a failed shutdown left) dies with us.
        reap_descendants()
    model = getattr(app.state, "model", None)
    # Non-zero when the model never loaded or the engines died: the orchestrator restarts us.
    return 1 if model is not None and model.health.state is ModelState.FAILED else 0
