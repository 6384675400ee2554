"""The Python client and the TRL/verl reward adapters against a small in-process fake of the
HTTP API (not the real service): batching, concurrency, retries, errors, versions, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service import reward_fn
from service.client import (
    AsyncCriticRMClient,
    CriticRMClient,
    CriticRMDeadlineExceeded,
    CriticRMError,
    CriticRMHTTPError,
    CriticRMUnavailable,
    CriticRMVersionMismatch,
    ScoreItem,
    ScoreItemLike,
    _parse_retry_after,
)
from service.reward_fn import (
    make_trl_reward_func,
    make_verl_batch_compute_score,
    make_verl_compute_score,
)

URL = "http://critic-rm.test"
WARNING = "the served reward head is untrained"

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
        return {
            "model_version": "v1",
            "critiques": [
                {"text": f"critique {j}", "reward": r, "finish_reason": "stop"} for j in range(n)
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
        return {"model_version": "v1", "limits": {"max_items_per_request": 512}}

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


@pytest.fixture
def rm() -> FakeRM:
    return FakeRM()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def sync_client(rm: FakeRM, sleeps: Sleeps | None = None, **kw: Any) -> CriticRMClient:
    transport = kw.pop("transport", None) or SyncASGITransport(make_app(rm))
    kw.setdefault("backoff_base_s", 0.01)
    return CriticRMClient(URL, transport=transport, sleep=sleeps or Sleeps(), **kw)


def async_client(rm: FakeRM, sleeps: Sleeps | None = None, **kw: Any) -> AsyncCriticRMClient:
    transport = kw.pop("transport", None) or httpx.ASGITransport(app=make_app(rm))
    kw.setdefault("backoff_base_s", 0.01)
    return AsyncCriticRMClient(URL, transport=transport, sleep=(sleeps or Sleeps()).coro, **kw)


def pairs(n: int) -> list[tuple[str, str]]:
    return [(f"question {i}", "answer" + "!" * i) for i in range(n)]


def unavailable(status: int = 503, retry_after: str = "0.01") -> Any:
    return error(status, "not_ready", "engines are loading", **{"Retry-After": retry_after})


# --------------------------------------------------------------------------- batching


def test_score_splits_into_batches_and_keeps_the_order(rm: FakeRM) -> None:
    with sync_client(rm, max_batch_items=3) as c:
        result = c.score(pairs(10), num_critiques=2, temperature=0.7)
    # Split requests run concurrently, so they may arrive in any order.
    assert sorted(len(b["items"]) for b in rm.bodies()) == [1, 3, 3, 3]
    assert result.rewards == [expected_reward(p, r) for p, r in pairs(10)]
    assert result.model_version == "v1"
    assert result.usage.prompt_tokens == 100 and result.usage.critique_tokens == 100
    assert result.warnings == [WARNING]  # once, not once per split request
    assert all(b["num_critiques"] == 2 and b["temperature"] == 0.7 for b in rm.bodies())
    assert "top_p" not in rm.bodies()[0]  # unset options are left to the checkpoint


def test_score_accepts_items_mappings_pairs_and_chat_prompts(rm: FakeRM) -> None:
    chat: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "bob"},
    ]
    items: list[ScoreItemLike] = [
        ScoreItem("q0", "a"),
        {"prompt": "q1", "response": "bb"},
        (chat, "ccc"),
    ]
    with sync_client(rm) as c:
        result = c.score(items, return_critiques=True)
    sent = rm.bodies()[0]
    assert sent["items"][2]["prompt"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert sent["return_critiques"] is True
    assert result.rewards[2] == expected_reward(sent["items"][2]["prompt"], "ccc")
    assert result.results[0].critiques == ["critique 0", "critique 1"]
    r0 = expected_reward("q0", "a")
    assert result.results[0].critique_rewards == [r0 - 0.5, r0 + 0.5]


def test_score_refuses_an_empty_call(rm: FakeRM) -> None:
    with sync_client(rm) as c, pytest.raises(ValueError):
        c.score([])


async def test_async_splits_and_respects_the_concurrency_limit(rm: FakeRM) -> None:
    rm.delay_s = 0.1
    async with async_client(rm, max_batch_items=2, max_concurrency=3) as c:
        result = await c.score(pairs(13))
    assert result.rewards == [expected_reward(p, r) for p, r in pairs(13)]
    assert len(rm.bodies()) == 7
    assert rm.max_in_flight == 3


def test_sync_sends_split_requests_concurrently_within_the_limit(rm: FakeRM) -> None:
    rm.delay_s = 0.1
    with sync_client(rm, max_batch_items=2, max_concurrency=2) as c:
        result = c.score(pairs(9))
    assert result.rewards == [expected_reward(p, r) for p, r in pairs(9)]
    assert len(rm.bodies()) == 5
    assert rm.max_in_flight == 2


# --------------------------------------------------------------------------- retries


def test_429_is_retried_after_retry_after(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.scripted = [unavailable(429), unavailable(429)]
    with sync_client(rm, sleeps) as c:
        result = c.score(pairs(2))
    assert result.rewards == [expected_reward(p, r) for p, r in pairs(2)]
    assert len(rm.bodies()) == 3
    assert len(sleeps.waits) == 2
    assert all(0.01 <= w <= 0.011 for w in sleeps.waits)  # Retry-After plus <=10% jitter


def test_retry_after_is_capped_by_max_backoff(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.scripted = [unavailable(429, retry_after="120")]
    with sync_client(rm, sleeps, max_backoff_s=0.02) as c:
        c.score(pairs(1))
    assert sleeps.waits == [0.02]


async def test_503_then_200_is_retried(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.scripted = [unavailable(503, retry_after="0.01")]
    async with async_client(rm, sleeps) as c:
        result = await c.score(pairs(3))
    assert result.model_version == "v1"
    assert len(rm.bodies()) == 2
    assert len(sleeps.waits) == 1 and 0.01 <= sleeps.waits[0] <= 0.011


def test_transport_errors_are_retried_with_exponential_backoff(rm: FakeRM, sleeps: Sleeps) -> None:
    errors: list[Exception] = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
    transport = FlakySync(SyncASGITransport(make_app(rm)), errors)
    with sync_client(rm, sleeps, transport=transport, backoff_base_s=0.01) as c:
        result = c.score(pairs(2))
    assert result.rewards == [expected_reward(p, r) for p, r in pairs(2)]
    # Equal jitter: attempt k waits in [base * 2^k / 2, base * 2^k].
    assert 0.005 <= sleeps.waits[0] <= 0.01
    assert 0.01 <= sleeps.waits[1] <= 0.02


async def test_async_transport_errors_are_retried(rm: FakeRM, sleeps: Sleeps) -> None:
    errors: list[Exception] = [httpx.ConnectError("refused"), httpx.RemoteProtocolError("eof")]
    transport = FlakyAsync(httpx.ASGITransport(app=make_app(rm)), errors)
    async with async_client(rm, sleeps, transport=transport) as c:
        result = await c.score(pairs(2))
    assert len(result) == 2 and len(sleeps.waits) == 2


def test_422_is_not_retried_and_names_the_field(rm: FakeRM, sleeps: Sleeps) -> None:
    with sync_client(rm, sleeps) as c, pytest.raises(CriticRMHTTPError) as info:
        c.score([("q", " ")])
    err = info.value
    assert (err.status, err.code, err.field) == (422, "invalid_request", "items[0].response")
    assert "response must not be empty" in str(err) and "items[0].response" in str(err)
    assert len(rm.bodies()) == 1 and sleeps.waits == []


def test_a_split_request_error_names_the_index_in_the_whole_call(rm: FakeRM) -> None:
    items = pairs(5)
    items[3] = ("q", "")
    c = sync_client(rm, max_batch_items=2, max_concurrency=1)
    with c, pytest.raises(CriticRMHTTPError) as info:
        c.score(items)
    assert info.value.field == "items[3].response"
    assert info.value.message.startswith("items[3].response:")


async def test_other_4xx_are_not_retried(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.scripted = [error(401, "unauthorized", "missing bearer token")]
    async with async_client(rm, sleeps) as c:
        with pytest.raises(CriticRMHTTPError) as info:
            await c.score(pairs(1))
    assert info.value.status == 401 and "missing bearer token" in str(info.value)
    assert sleeps.waits == []


def test_retries_run_out_into_unavailable(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.always = unavailable(503)
    with sync_client(rm, sleeps, max_retries=3) as c, pytest.raises(CriticRMUnavailable) as info:
        c.score(pairs(1))
    assert info.value.attempts == 4 and info.value.status == 503
    assert "engines are loading" in str(info.value)
    assert len(rm.bodies()) == 4 and len(sleeps.waits) == 3


async def test_transport_errors_run_out_into_unavailable(rm: FakeRM, sleeps: Sleeps) -> None:
    errors: list[Exception] = [httpx.ConnectError("refused")] * 3
    transport = FlakyAsync(httpx.ASGITransport(app=make_app(rm)), errors)
    async with async_client(rm, sleeps, transport=transport, max_retries=2) as c:
        with pytest.raises(CriticRMUnavailable) as info:
            await c.score(pairs(1))
    assert info.value.status is None
    assert isinstance(info.value.last_error, httpx.ConnectError)
    assert "refused" in str(info.value)


def test_one_failed_split_request_fails_the_call(rm: FakeRM) -> None:
    rm.scripted = [error(400, "invalid_json", "malformed JSON", "body")]
    c = sync_client(rm, max_batch_items=1, max_concurrency=4)
    with c, pytest.raises(CriticRMHTTPError) as info:
        c.score(pairs(6))
    assert info.value.status == 400


def test_4xx_retry_statuses_are_refused() -> None:
    with pytest.raises(ValueError):
        CriticRMClient(URL, retry_statuses=(422, 503))


def test_retry_after_parsing() -> None:
    assert _parse_retry_after("1.5") == 1.5
    assert _parse_retry_after("garbage") is None
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


# --------------------------------------------------------------------------- model versions


def test_a_reload_between_split_requests_retries_the_whole_call(rm: FakeRM) -> None:
    rm.version = lambda i: "v1" if i == 0 else "v2"
    with sync_client(rm, max_batch_items=2, max_concurrency=1) as c:
        result = c.score(pairs(4))
    assert result.model_version == "v2"
    assert len(rm.bodies()) == 4  # two split requests, twice


async def test_versions_that_keep_changing_raise(rm: FakeRM) -> None:
    rm.version = lambda i: f"v{i % 2}"
    async with async_client(rm, max_batch_items=2, max_concurrency=1) as c:
        with pytest.raises(CriticRMVersionMismatch) as info:
            await c.score(pairs(4))
    assert sorted(set(info.value.versions)) == ["v0", "v1"]
    assert "different model versions" in str(info.value)


# --------------------------------------------------------------------------- headers, deadlines


def test_api_key_and_deadline_headers_are_sent(rm: FakeRM) -> None:
    with sync_client(rm, api_key="sekret", deadline_s=30) as c:
        c.score(pairs(1))
        c.score(pairs(1), deadline_s=2.5)
    (_, _, first), (_, _, second) = rm.requests
    assert first["authorization"] == "Bearer sekret"
    assert 29 < float(first["x-request-timeout"]) <= 30
    assert 2 < float(second["x-request-timeout"]) <= 2.5


def test_no_deadline_header_without_a_deadline(rm: FakeRM) -> None:
    with sync_client(rm) as c:
        c.score(pairs(1))
    headers = rm.requests[0][2]
    assert "x-request-timeout" not in headers and "authorization" not in headers


async def test_504_raises_deadline_exceeded_without_retry(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.delay_s = 0.2
    async with async_client(rm, sleeps) as c:
        with pytest.raises(CriticRMDeadlineExceeded) as info:
            await c.score(pairs(1), deadline_s=0.05)
    assert info.value.status == 504 and "deadline passed" in str(info.value)
    assert len(rm.bodies()) == 1 and sleeps.waits == []


def test_no_retry_is_started_that_cannot_finish_in_time(rm: FakeRM, sleeps: Sleeps) -> None:
    rm.scripted = [unavailable(503, retry_after="5")]
    with sync_client(rm, sleeps) as c, pytest.raises(CriticRMDeadlineExceeded) as info:
        c.score(pairs(1), deadline_s=1.0)
    assert info.value.status is None and isinstance(info.value.last_error, CriticRMHTTPError)
    assert sleeps.waits == [] and len(rm.bodies()) == 1


# --------------------------------------------------------------------------- other routes


def test_critique_ready_and_info(rm: FakeRM) -> None:
    with sync_client(rm) as c:
        crit = c.critique([{"role": "user", "content": "q"}], "resp", n=3, max_critique_tokens=8)
        ready = c.ready()
        info = c.info()
        rm.always = unavailable(503)
        not_ready = c.ready()
    assert len(crit.critiques) == 3 and crit.critiques[0].finish_reason == "stop"
    assert rm.bodies("/critique")[0]["n"] == 3
    assert ready.ready and ready.model_version == "v1" and ready.warnings == [WARNING]
    assert info["limits"]["max_items_per_request"] == 512
    assert not not_ready.ready and not_ready.status == "loading"


async def test_async_critique_and_ready(rm: FakeRM) -> None:
    async with async_client(rm) as c:
        crit = await c.critique("q", "resp")
        ready = await c.wait_ready(timeout_s=1, poll_s=0.01)
    assert crit.reward == expected_reward("q", "resp") and ready.ready


# --------------------------------------------------------------------------- real sockets


@contextlib.contextmanager
def live_server(rm: FakeRM) -> Iterator[str]:
    """The fake on a real loopback socket (for the timeouts, which ASGI transports ignore)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(rm), log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < end and thread.is_alive(), "fake server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def test_read_timeouts_are_retried_then_give_up(rm: FakeRM) -> None:
    rm.delay_s = 0.5
    with live_server(rm) as url:
        client = CriticRMClient(url, read_timeout_s=0.1, max_retries=1, backoff_base_s=0.01)
        with client, pytest.raises(CriticRMUnavailable) as info:
            client.score(pairs(1))
    assert isinstance(info.value.last_error, httpx.ReadTimeout)
    assert info.value.attempts == 2


def test_the_client_gives_up_at_its_deadline_if_the_server_does_not(rm: FakeRM) -> None:
    rm.delay_s, rm.honor_deadline = 2.0, False
    with live_server(rm) as url:
        start = time.monotonic()
        with CriticRMClient(url) as client, pytest.raises(CriticRMDeadlineExceeded) as info:
            client.score(pairs(1), deadline_s=0.1)
        elapsed = time.monotonic() - start
    assert info.value.status is None and isinstance(info.value.last_error, httpx.ReadTimeout)
    assert elapsed < 1.9  # the deadline plus a short grace for the server's own 504


# --------------------------------------------------------------------------- TRL adapter


def test_trl_reward_func_with_standard_inputs(rm: FakeRM) -> None:
    func = make_trl_reward_func(URL, num_critiques=3, transport=SyncASGITransport(make_app(rm)))
    prompts = ["The sky is", "The sun is", "Water is"]
    completions = [" blue.", "", " wet and cold."]
    rewards = func(prompts=prompts, completions=completions, completion_ids=[[1], [], [2]])
    assert func.__name__ == "critic_rm"
    assert rewards == [expected_reward("The sky is", " blue."), None, rewards[2]]
    assert rewards[2] == expected_reward("Water is", " wet and cold.")
    sent = rm.bodies()[0]
    assert len(sent["items"]) == 2  # the empty completion is never sent
    assert sent["num_critiques"] == 3 and sent["truncate_prompt"] is True


def test_trl_reward_func_with_conversational_inputs(rm: FakeRM) -> None:
    func = make_trl_reward_func(
        URL, name="critic", empty_reward=-5.0, transport=SyncASGITransport(make_app(rm))
    )
    prompts = [
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "Capital of France?"}],
    ]
    completions = [
        [{"role": "assistant", "content": "4"}],
        [{"role": "assistant", "content": "  "}],
    ]
    rewards = func(prompts, completions, trainer_state=object(), answer=["4", "Paris"])
    assert func.__name__ == "critic"
    assert rewards == [expected_reward(prompts[0], "4"), -5.0]
    assert rm.bodies()[0]["items"] == [{"prompt": prompts[0], "response": "4"}]


def test_trl_completion_text_takes_the_assistant_turns() -> None:
    completion = [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [{"name": "f"}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is 42."}]},
    ]
    assert reward_fn._completion_text(completion) == "Let me look.\n\nIt is 42."
    assert reward_fn._completion_text([{"content": "no role"}]) == "no role"


def test_reward_functions_pickle_without_their_client() -> None:
    func = make_trl_reward_func(URL, api_key="k")
    assert isinstance(func.client, CriticRMClient)
    copy = pickle.loads(pickle.dumps(func))
    assert copy.__name__ == "critic_rm" and copy._client is None
    assert isinstance(copy.client, CriticRMClient)
    func.close()
    copy.close()


# --------------------------------------------------------------------------- verl adapter


def test_verl_compute_score_reads_the_prompt_from_extra_info(rm: FakeRM) -> None:
    score = make_verl_compute_score(URL, num_critiques=2, transport=SyncASGITransport(make_app(rm)))
    value = score("openai/gsm8k", "#### 72", "72", extra_info={"question": "How many?"})
    assert value == expected_reward("How many?", "#### 72")
    chat = [{"role": "user", "content": "Hi"}]
    assert score("hh", "Hello", None, extra_info={"prompt": chat}) == expected_reward(chat, "Hello")
    assert score("hh", "", None, extra_info={"prompt": "x"}) == 0.0  # empty: no request
    with pytest.raises(ValueError, match="extra_info"):
        score("hh", "Hello", None, extra_info={"index": 3})
    assert len(rm.bodies()) == 2


class ObjectArray(list[Any]):
    """Stands in for the numpy object arrays verl keeps in non_tensor_batch."""

    def tolist(self) -> list[Any]:
        return list(self)


def test_verl_batch_compute_score(rm: FakeRM) -> None:
    score = make_verl_batch_compute_score(
        URL, empty_reward=-1.0, max_batch_items=2, transport=SyncASGITransport(make_app(rm))
    )
    chat = ObjectArray([{"role": "user", "content": "q2"}])
    infos: list[dict[str, Any]] = [
        {"question": "q0"},
        {"prompt": "q1", "question": "ignored"},
        {"prompt": chat},
    ]
    values = score(["d"] * 3, ["a0", "", "a2"], [None] * 3, infos)
    assert values == [expected_reward("q0", "a0"), -1.0, expected_reward(list(chat), "a2")]
    assert [len(b["items"]) for b in rm.bodies()] == [2]


def test_verl_module_entry_points_take_reward_kwargs(
    rm: FakeRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = SyncASGITransport(make_app(rm))
    monkeypatch.setattr(
        reward_fn, "CriticRMClient", functools.partial(CriticRMClient, transport=transport)
    )
    monkeypatch.setattr(reward_fn, "_shared", {})
    monkeypatch.setenv(reward_fn.API_KEY_ENV, "env-key")
    kwargs = {"url": URL, "num_critiques": 1, "reward_router_address": None}
    one = reward_fn.compute_score("d", "yes", None, {"question": "ok?"}, **kwargs)
    again = reward_fn.compute_score("d", "no", None, {"question": "ok?"}, **kwargs)
    batch = reward_fn.compute_score_batch(
        ["d"], ["yes"], [None], [{"question": "ok?"}], url=URL, prompt_keys=["question"]
    )
    assert one == batch[0] == expected_reward("ok?", "yes")
    assert again == expected_reward("ok?", "no")
    assert len(reward_fn._shared) == 2  # one adapter per distinct setting, reused
    assert rm.requests[0][2]["authorization"] == "Bearer env-key"
    monkeypatch.delenv(reward_fn.API_KEY_ENV)
    monkeypatch.delenv(reward_fn.URL_ENV, raising=False)
    with pytest.raises(ValueError, match=reward_fn.URL_ENV):
        reward_fn.compute_score("d", "x", None, {"question": "q"})


def test_errors_form_one_hierarchy() -> None:
    for cls in (
        CriticRMHTTPError,
        CriticRMUnavailable,
        CriticRMDeadlineExceeded,
        CriticRMVersionMismatch,
    ):
        assert issubclass(cls, CriticRMError)
