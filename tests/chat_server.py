"""A local OpenAI-compatible chat-completions endpoint for tests of what calls one out (/refine's
policy.url, the trainer's refine.actor): every POST is recorded in `server.seen` as (path, body,
authorization) and answered by `respond(server, body)` -> (status, JSON payload or raw bytes).
A 3xx answer points at the cloud metadata address, which a caller must never follow."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[Any, dict[str, Any]], tuple[int, Any]]


class _Chat(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        server.seen.append((self.path, body, self.headers.get("authorization")))
        status, payload = server.respond(server, body)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("location", "http://169.254.169.254/latest/meta-data")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        return None


@contextmanager
def chat_server(respond: Respond) -> Iterator[Any]:
    """The server, serving on 127.0.0.1 at an ephemeral port until the block ends."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    server.seen, server.respond = [], respond
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
