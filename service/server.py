"""uvicorn with a graceful drain: on SIGTERM /ready turns 503 and new scoring requests get 503,
requests in flight finish (up to CRM_DRAIN_TIMEOUT_S), then uvicorn's normal shutdown runs."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A second signal skips the drain (uvicorn's own handling: exit, then force-exit)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._draining = False
        app.state.on_fatal = self.request_exit

    def request_exit(self) -> None:
        """Drain and exit, as on SIGTERM (used when the engines died)."""
        self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = getattr(self.app.state, "loop", None)
        if self._draining or loop is None or not hasattr(self.app.state, "service"):
            super().handle_exit(sig, frame)
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
            log.warning("drain timeout: %d requests still in flight", service.inflight)
        # Not super().handle_exit: uvicorn would re-raise the signal after shutting down, and
        # the process would die by SIGTERM instead of exiting 0 after a clean drain.
        self.should_exit = True
