"""The client (sync and async) against a small in-process fake of the HTTP API: batching,
concurrency, retries, errors, versions, deadlines; and the calls driven by hand, without
any I/O."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from critic_rm_client import (
    AsyncCriticRMClient,
    AsyncRewardClient,
    ClientConfig,
    CriticRMClient,
    CriticRMDeadlineExceeded,
    CriticRMError,
    CriticRMHTTPError,
    CriticRMUnavailable,
    CriticRMVersionMismatch,
    RewardClient,
    ScoreItem,
    ScoreItemLike,
    build,
    calls,
    parse,
    retry,
)
from critic_rm_client.config import SCORE_OPTION_NAMES, option_fields
from critic_rm_client.parse import parse_retry_after
from critic_rm_client.steps import Gather, Send, Sleep
from tests.unit.client_fake import (
    URL,
    WARNING,
    FakeRM,
    FlakyAsync,
    FlakySync,
    Sleeps,
    SyncASGITransport,
    async_client,
    error,
    expected_reward,
    live_server,
    make_app,
    pairs,
    sync_client,
    unavailable,
)


@pytest.fixture
def rm() -> FakeRM:
    return FakeRM()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


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
        RewardClient(URL, retry_statuses=(422, 503))


def test_retry_after_parsing() -> None:
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


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


def test_structured_critiques_come_back_in_their_parts(rm: FakeRM) -> None:
    with sync_client(rm) as c:
        crit = c.critique("q", "resp", n=1, format="structured")
        plain = c.critique("q", "resp", n=1)
        with pytest.raises(TypeError, match=r"'fromat'.*'format'"):
            c.critique("q", "resp", fromat="structured")  # type: ignore[call-arg]
    assert rm.bodies("/critique")[0]["format"] == "structured"
    assert crit.critiques[0].verdict == "Correct" and crit.critiques[0].analysis == "critique"
    assert plain.critiques[0].verdict is None and "format" not in rm.bodies("/critique")[1]


async def test_async_critique_and_ready(rm: FakeRM) -> None:
    async with async_client(rm) as c:
        crit = await c.critique("q", "resp")
        ready = await c.wait_ready(timeout_s=1, poll_s=0.01)
    assert crit.reward == expected_reward("q", "resp") and ready.ready


# --------------------------------------------------------------------------- real sockets


def test_read_timeouts_are_retried_then_give_up(rm: FakeRM) -> None:
    rm.delay_s = 0.5
    with live_server(rm) as url:
        client = RewardClient(url, read_timeout_s=0.1, max_retries=1, backoff_base_s=0.01)
        with client, pytest.raises(CriticRMUnavailable) as info:
            client.score(pairs(1))
    assert isinstance(info.value.last_error, httpx.ReadTimeout)
    assert info.value.attempts == 2


def test_the_client_gives_up_at_its_deadline_if_the_server_does_not(rm: FakeRM) -> None:
    rm.delay_s, rm.honor_deadline = 2.0, False
    with live_server(rm) as url:
        start = time.monotonic()
        with RewardClient(url) as client, pytest.raises(CriticRMDeadlineExceeded) as info:
            client.score(pairs(1), deadline_s=0.1)
        elapsed = time.monotonic() - start
    assert info.value.status is None and isinstance(info.value.last_error, httpx.ReadTimeout)
    assert elapsed < 1.9  # the deadline plus a short grace for the server's own 504


def test_errors_form_one_hierarchy() -> None:
    for cls in (
        CriticRMHTTPError,
        CriticRMUnavailable,
        CriticRMDeadlineExceeded,
        CriticRMVersionMismatch,
    ):
        assert issubclass(cls, CriticRMError)


# --------------------------------------------------------------------------- the calls, by hand


def response(status: int, body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def test_a_request_call_is_a_plain_generator_of_actions() -> None:
    """The retry policy runs without any transport: it asks to send, is told 503 with a
    Retry-After, asks to sleep that long, sends again and returns the decoded body."""
    config = ClientConfig(URL, max_retries=2)
    call = retry.request(config, "POST", "/score", {"items": []}, retry.Budget(None))
    first = next(call)
    assert isinstance(first, Send) and (first.method, first.path) == ("POST", "/score")
    assert first.headers is None  # no deadline, no X-Request-Timeout
    wait = call.send(
        response(503, {"error": {"code": "not_ready", "message": "x"}}, **{"Retry-After": "2"})
    )
    assert isinstance(wait, Sleep) and 2.0 <= wait.seconds <= 2.2
    assert isinstance(call.send(None), Send)
    with pytest.raises(StopIteration) as done:
        call.send(response(200, {"ok": 1}))
    assert done.value.value == {"ok": 1}


def test_a_transport_error_thrown_into_a_call_is_retried_then_gives_up() -> None:
    config = ClientConfig(URL, max_retries=1, backoff_base_s=0.01)
    call = retry.request(config, "GET", "/info", None, retry.Budget(None))
    next(call)
    assert isinstance(call.throw(httpx.ConnectError("refused")), Sleep)
    next(call)
    with pytest.raises(CriticRMUnavailable) as info:
        call.throw(httpx.ConnectError("refused again"))
    assert info.value.attempts == 2 and "refused again" in str(info.value)


def test_the_deadline_header_carries_the_time_left() -> None:
    now = [100.0]
    call = retry.request(ClientConfig(URL), "GET", "/info", None, retry.Budget(5.0, lambda: now[0]))
    now[0] = 103.0
    sent = next(call)
    assert isinstance(sent, Send) and sent.headers == {retry.DEADLINE_HEADER: "2.000"}


def test_score_chunks_into_one_gather_of_split_requests() -> None:
    config = ClientConfig(URL, max_batch_items=4, max_concurrency=3)
    gather = next(calls.score(config, pairs(10), {"num_critiques": 2}))
    assert isinstance(gather, Gather) and gather.limit == 3
    sends = [next(c) for c in gather.calls]
    assert [len(s.json["items"]) for s in sends] == [4, 4, 2]
    assert all(s.json["num_critiques"] == 2 for s in sends)
    assert sends[1].json["items"][0]["prompt"] == "question 4"


def test_chunks_keep_offsets() -> None:
    assert build.chunks([1, 2, 3, 4, 5], 2) == [(0, [1, 2]), (2, [3, 4]), (4, [5])]
    assert build.chunks([1], 10) == [(0, [1])]


def test_options_drop_unset_fields_but_keep_false() -> None:
    fields = option_fields(
        {"num_critiques": None, "truncate_prompt": False, "return_critiques": False},
        SCORE_OPTION_NAMES,
    )
    assert fields == {"truncate_prompt": False}


def test_parsing_refuses_malformed_answers() -> None:
    with pytest.raises(CriticRMError, match="malformed /score"):
        parse.score_result({"results": []}, 0)
    with pytest.raises(CriticRMError, match="2 results for 1 items"):
        parse.score_result({"model_version": "v", "results": [{"reward": 1}, {"reward": 2}]}, 1)
    result = parse.score_result({"model_version": "v", "results": [{"reward": "1.5"}]}, 1)
    assert result.rewards == [1.5] and result.results[0].critique_rewards == []


# --------------------------------------------------------------------------- unknown names


def test_a_misspelt_score_option_raises_naming_it(rm: FakeRM) -> None:
    with sync_client(rm) as c, pytest.raises(TypeError, match=r"'num_critque'.*'num_critiques'"):
        c.score(pairs(1), num_critque=2)  # type: ignore[call-arg]
    assert rm.bodies() == []


def test_a_misspelt_client_option_raises_naming_it() -> None:
    with pytest.raises(TypeError, match=r"'max_batch'.*'max_batch_items'"):
        RewardClient(URL, max_batch=3)


def test_the_old_names_are_the_new_clients() -> None:
    assert CriticRMClient is RewardClient and AsyncCriticRMClient is AsyncRewardClient
    config = ClientConfig(URL + "/", api_key="k", max_retries=1)
    with RewardClient(config, max_batch_items=7) as c:
        assert c.config.max_batch_items == 7 and c.config.max_retries == 1
        assert c.base_url == URL


# --------------------------------------------------------------------------- sync == async


def scripted(log: list[str]) -> httpx.MockTransport:
    """429 (Retry-After 0), then 503, then answers: a transport for sync and async alike."""
    answers = [
        response(429, {"error": {"code": "overloaded", "message": "busy"}}, **{"Retry-After": "0"}),
        response(503, {"error": {"code": "not_ready", "message": "loading"}}),
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        log.append(f"{request.method} {request.url.path}")
        if answers:
            return answers.pop(0)
        items = json.loads(request.content)["items"]
        results = [{"reward": expected_reward(i["prompt"], i["response"])} for i in items]
        return response(200, {"model_version": "v7", "results": results})

    return httpx.MockTransport(handle)


async def test_sync_and_async_give_the_same_results_and_retries() -> None:
    sync_log: list[str] = []
    async_log: list[str] = []
    sync_sleeps, async_sleeps = Sleeps(), Sleeps()
    kw: dict[str, Any] = {"max_batch_items": 2, "max_concurrency": 1, "backoff_base_s": 0.01}
    with RewardClient(URL, transport=scripted(sync_log), sleep=sync_sleeps, **kw) as c:
        sync_result = c.score(pairs(5))
    client = AsyncRewardClient(URL, transport=scripted(async_log), sleep=async_sleeps.coro, **kw)
    async with client as a:
        async_result = await a.score(pairs(5))
    assert sync_result == async_result
    assert sync_result.rewards == [expected_reward(p, r) for p, r in pairs(5)]
    assert sync_log == async_log == ["POST /score"] * 5  # 2 retried + 3 split requests
    assert len(sync_sleeps.waits) == len(async_sleeps.waits) == 2
    assert sync_sleeps.waits[0] == async_sleeps.waits[0] == 0.0  # Retry-After: 0


async def test_sync_and_async_raise_the_same_errors(rm: FakeRM) -> None:
    items = pairs(5)
    items[3] = ("q", "")
    with sync_client(rm, max_batch_items=2) as c, pytest.raises(CriticRMHTTPError) as s:
        c.score(items)
    async with async_client(rm, max_batch_items=2) as a:
        with pytest.raises(CriticRMHTTPError) as e:
            await a.score(items)
    assert str(s.value) == str(e.value) and s.value.field == "items[3].response"


# --------------------------------------------------------------------------- OpenRLHF's route


def test_get_reward_splits_and_names_the_query_index(rm: FakeRM) -> None:
    prompts = [f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n" for i in range(5)]
    queries = [p + f"answer {i}<|im_end|>" for i, p in enumerate(prompts)]
    with sync_client(rm, max_batch_items=2, max_concurrency=1) as c:
        result = c.get_reward(queries, prompts)
        assert result.rewards == [expected_reward(p, f"answer {i}") for i, p in enumerate(prompts)]
        assert result.extra_logs == {"critic_rm_reward_std": [0.5] * 5}
        assert [len(b["query"]) for b in rm.bodies("/get_reward")] == [2, 2, 1]
        queries[4] = prompts[4] + "<|im_end|>"
        with pytest.raises(CriticRMHTTPError) as info:
            c.get_reward(queries, prompts)
    assert info.value.field == "query[4]" and info.value.message.startswith("query[4]:")


async def test_async_get_reward(rm: FakeRM) -> None:
    async with async_client(rm) as a:
        result = await a.get_reward(["p: x"], ["p: "])
    assert result.rewards == result.scores == [expected_reward("p: ", "x")]
