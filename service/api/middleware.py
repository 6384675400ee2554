"""Pure ASGI middlewares (no BaseHTTPMiddleware: it hides client disconnects from handlers)."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability.metrics import Metrics


class RequestMetrics:
    """Latency histogram and request counter by route template and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(route, str(status)).observe(
                time.perf_counter() - t0
            )
            self.metrics.requests.labels(route, str(status)).inc()


def _too_large(max_bytes: int) -> HTTPException:
    # An HTTPException: FastAPI re-raises those from body parsing (anything else becomes a 400).
    return HTTPException(413, f"request body over {max_bytes} bytes")


# A body may take read_timeout_s plus the time to send it at this rate: a big body on a slow
# link gets through, a client dripping bytes does not (a slow-loris earns microseconds).
MIN_BODY_RATE = 64 * 1024  # bytes per second


class BodyLimit:
    """413 for request bodies over `max_bytes`, by Content-Length or as they stream in; 408 for
    a body not received within `read_timeout_s` (plus its size at MIN_BODY_RATE) of the
    request's start: a client that sends a body slowly, or stops half-way, must not hold a
    connection and its handler open."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, read_timeout_s: float, metrics: Metrics
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics

    async def _reject(self, send: Send) -> None:
        self.metrics.request_failures.labels("body_too_large").inc()
        body = json.dumps(
            {
                "error": {
                    "code": "payload_too_large",
                    "field": "body",
                    "message": f"request body over {self.max_bytes} bytes",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        seen = 0
        body_done = False
        start = time.monotonic()

        async def guarded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # only a disconnect can come now: no deadline on waiting for it
                return await receive()
            deadline = start + self.read_timeout_s + seen / MIN_BODY_RATE
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                self.metrics.request_failures.labels("body_timeout").inc()
                raise HTTPException(
                    408,
                    f"request body not received in time ({self.read_timeout_s:g} s, plus "
                    f"{MIN_BODY_RATE // 1024} KiB/s of body)",
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    self.metrics.request_failures.labels("body_too_large").inc()
                    raise _too_large(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, guarded_receive, send)
