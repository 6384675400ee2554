"""Pure ASGI middlewares (no BaseHTTPMiddleware: it hides client disconnects from handlers)."""

from __future__ import annotations

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


class BodyLimit:
    """413 for request bodies over `max_bytes`, by Content-Length or as they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
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

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    self.metrics.request_failures.labels("body_too_large").inc()
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
