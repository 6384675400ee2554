"""A small in-process fake of the Critic-RM HTTP API (not the real service) for the client and
adapter tests, and the transports that reach it without (or with) a socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from critic_rm_client import AsyncRewardClient, RewardClient

URL = "http://critic-rm.test"
WARNING = "the served reward head is untrained"
STATS = {"mean": 6.3, "std": 0.3}
EMPTY_REWARD = STATS["mean"] - 3.0 * STATS["std"]  # the adapters' default: 3 stds below the mean
END = "<|im_end|>"

# --------------------------------------------------------------------------- the fake service


def prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def expected_reward(prompt: Any, response: str) -> float:
    """The fake's reward: deterministic in the text, different for every test input."""
    return len(response) + len(prompt_text(prompt)) / 1000.0


def error(status: int, code: str, message: str, field: str | None = None, **headers: str) -> Any:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


@dataclass
class FakeRM:
    """State and knobs of the fake service; thread-safe (the live server runs in a thread)."""

    scripted: list[Any] = field(default_factory=list)  # responses served before normal ones
    always: Any = None  # a response served to every /score request
    version: Callable[[int], str] = lambda _i: "v1"
    delay_s: float = 0.0
    honor_deadline: bool = True
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    scored: int = 0
    reward_stats: dict[str, float] | None = field(default_factory=lambda: dict(STATS))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str = "/score") -> list[dict[str, Any]]:
        return [b for p, b, _ in self.requests if p == path]


def make_app(rm: FakeRM) -> FastAPI:
    app = FastAPI()

    async def admit(request: Request) -> tuple[dict[str, Any], Any]:
        body = await request.json() if request.method == "POST" else {}
        with rm.lock:
            rm.requests.append((request.url.path, body, dict(request.headers)))
            rm.in_flight += 1
            rm.max_in_flight = max(rm.max_in_flight, rm.in_flight)
        try:
            deadline = request.headers.get("x-request-timeout")
            if deadline is not None and rm.honor_deadline and rm.delay_s > float(deadline):
                await asyncio.sleep(float(deadline))
                return body, error(504, "deadline_exceeded", "deadline passed while queued")
            if rm.delay_s:
                await asyncio.sleep(rm.delay_s)
        finally:
            with rm.lock:
                rm.in_flight -= 1
        with rm.lock:
            if rm.scripted:
                return body, rm.scripted.pop(0)
        return body, rm.always

    @app.post("/score")
    async def score(request: Request) -> Any:
        body, canned = await admit(request)
        if canned is not None:
            return canned
        for i, item in enumerate(body["items"]):
            if not item["response"].strip():
                msg = f"items[{i}].response: response must not be empty"
                return error(422, "invalid_request", msg, f"items[{i}].response")
        with rm.lock:
            version = rm.version(rm.scored)
            rm.scored += 1
        m = body.get("num_critiques", 2)
        results = []
        for item in body["items"]:
            r = expected_reward(item["prompt"], item["response"])
            rewards = [r - 0.5, r + 0.5] if m else [r]
            results.append(
                {
                    "reward": r,
                    "critique_rewards": rewards[:m] if m else rewards,
                    "reward_std": 0.5 if m else 0.0,
                    "critiques": [f"critique {j}" for j in range(m)]
                    if body.get("return_critiques")
                    else None,
                    "cached": False,
                }
            )
        usage = {"prompt_tokens": 10 * len(results), "critique_tokens": 5 * m * len(results)}
        return {
            "model_version": version,
            "results": results,
            "usage": usage,
            "warnings": [WARNING],
        }

    @app.post("/critique")
    async def critique(request: Request) -> Any:
        body, canned = await admit(request)
        if canned is not None:
            return canned
        r = expected_reward(body["prompt"], body["response"])
        n = body.get("n", 2)
        parts = (
            {"analysis": "critique", "suggestions": "", "verdict": "Correct"}
            if body.get("format") == "structured"
            else {}
        )
        return {
            "model_version": "v1",
            "critiques": [
                {"text": f"critique {j}", "reward": r, "finish_reason": "stop", **parts}
                for j in range(n)
            ],
            "reward": r,
            "cached": False,
            "usage": {"prompt_tokens": 3, "critique_tokens": 4},
            "warnings": [],
        }

    @app.get("/ready")
    async def ready() -> Any:
        if rm.always is not None:
            return JSONResponse({"status": "loading", "error": None}, status_code=503)
        return {"status": "ready", "model_version": "v1", "warnings": [WARNING]}

    @app.get("/info")
    async def info(request: Request) -> Any:
        _, canned = await admit(request)
        if canned is not None:
            return canned
        return {
            "model_version": rm.version(rm.scored),
            "limits": {"max_items_per_request": 512},
            "reward_stats": rm.reward_stats,
        }

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Any:
        body, canned = await admit(request)
        if canned is not None:
            return canned
        rewards = []
        for i, (query, prompt) in enumerate(zip(body["query"], body["prompts"], strict=True)):
            response = query[len(prompt) :].replace(END, "")
            if not response.strip():
                return error(422, "invalid_request", f"query[{i}]: the response part is empty",
                             f"query[{i}]")  # fmt: skip
            rewards.append(expected_reward(prompt, response))
        return {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {"critic_rm_reward_std": [0.5] * len(rewards)},
        }

    return app


class SyncASGITransport(httpx.BaseTransport):
    """Drives the ASGI app from the sync client: one event loop per request, so it also works
    from the client's worker threads, and no socket is opened."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def run() -> httpx.Response:
            resp = await self.inner.handle_async_request(request)
            content = await resp.aread()
            return httpx.Response(resp.status_code, headers=resp.headers, content=content)

        return asyncio.run(run())


class FlakySync(httpx.BaseTransport):
    """Raises the queued transport errors first, then delegates."""

    def __init__(self, inner: httpx.BaseTransport, errors: list[Exception]) -> None:
        self.inner, self.errors = inner, errors

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.handle_request(request)


class FlakyAsync(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, errors: list[Exception]) -> None:
        self.inner, self.errors = inner, errors

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.errors:
            raise self.errors.pop(0)
        return await self.inner.handle_async_request(request)


class Sleeps:
    """Records the waits instead of sleeping (sync and async)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def coro(self, seconds: float) -> None:
        self.waits.append(seconds)


def sync_client(rm: FakeRM, sleeps: Sleeps | None = None, **kw: Any) -> RewardClient:
    transport = kw.pop("transport", None) or SyncASGITransport(make_app(rm))
    kw.setdefault("backoff_base_s", 0.01)
    return RewardClient(URL, transport=transport, sleep=sleeps or Sleeps(), **kw)


def async_client(rm: FakeRM, sleeps: Sleeps | None = None, **kw: Any) -> AsyncRewardClient:
    transport = kw.pop("transport", None) or httpx.ASGITransport(app=make_app(rm))
    kw.setdefault("backoff_base_s", 0.01)
    return AsyncRewardClient(URL, transport=transport, sleep=(sleeps or Sleeps()).coro, **kw)


def pairs(n: int) -> list[tuple[str, str]]:
    return [(f"question {i}", "answer" + "!" * i) for i in range(n)]


def unavailable(status: int = 503, retry_after: str = "0.01") -> Any:
    return error(status, "not_ready", "engines are loading", **{"Retry-After": retry_after})


@contextlib.contextmanager
def live_server(rm: FakeRM) -> Iterator[str]:
    """The fake on a real loopback socket (for the timeouts, which ASGI transports ignore)."""
    with serve_app(make_app(rm), lifespan="off") as url:
        yield url


@contextlib.contextmanager
def serve_app(app: FastAPI, lifespan: str = "on") -> Iterator[str]:
    """`app` on a real loopback socket, in a thread of its own (its own event loop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan=lifespan,
        timeout_graceful_shutdown=1,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < end and thread.is_alive(), "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()
