"""/refine's own logic on fake engines: the loop, its stop rules, limits, the policy URL rules
and the external-policy protocol. (Real engines: tests/integration/test_refine_http.py.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from critic_rm_client import AsyncRewardClient, RewardClient
from service.app import create_app
from service.contract.options import PolicyLimits
from service.engines.chat_endpoint import PolicyFailure, parse_completions
from service.scoring.errors import InvalidRequest
from service.scoring.policy import check_policy_url
from tests.chat_server import chat_server
from tests.fakes import FakeGenerator, loader_for, running, wait_ready
from tests.unit.test_gateway import make_settings

ITEM = {"prompt": "What is 2+2?", "response": "5"}


def _client(root: Path, **settings: object) -> Iterator[TestClient]:
    app = create_app(make_settings(root, **settings), loader_for(root))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture()
def client(checkpoint_root: Path) -> Iterator[TestClient]:
    yield from _client(checkpoint_root, max_refine_rounds=4)


def generator(c: TestClient) -> FakeGenerator:
    gen: FakeGenerator = c.app.state.service.runtime.generator  # type: ignore[attr-defined]
    return gen


def test_never_runs_every_round_and_keeps_the_best(client: TestClient) -> None:
    generator(client).verdict = "Incorrect"
    r = client.post(
        "/refine",
        json={**ITEM, "rounds": 3, "candidates": 2, "num_critiques": 2, "stop": "never"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stop_reason"] == "rounds" and [x["round"] for x in body["rounds"]] == [1, 2, 3]
    assert body["model_version"] == client.get("/info").json()["model_version"]
    scored = [body["original"]] + [c for x in body["rounds"] for c in x["candidates"]]
    for s in scored:
        assert len(s["critique_rewards"]) == 2 and len(s["critiques"]) == 2
        assert s["reward"] == pytest.approx(sum(s["critique_rewards"]) / 2)
        assert all(c["verdict"] == "Incorrect" for c in s["critiques"])
    assert all(len(x["candidates"]) == 2 for x in body["rounds"])
    # The best is the highest reward seen, and `improved` says when it changed.
    best = max(scored, key=lambda s: s["reward"])
    assert body["best"]["reward"] == pytest.approx(best["reward"])
    assert body["best"]["response"] == best["response"]
    running = body["original"]["reward"]
    for x in body["rounds"]:
        top = max(c["reward"] for c in x["candidates"])
        assert x["improved"] == (top > running)
        running = max(running, top)
        # The revision was written from a critique of the best so far that found it wrong.
        assert x["critique"]["verdict"] == "Incorrect"
    # The fake writes 2 tokens of verdict after 5 + j of text; revisions are 5 + j tokens too.
    assert body["usage"]["revision_tokens"] == 3 * (5 + 6)
    assert body["usage"]["critique_tokens"] == 7 * ((5 + 2) + (6 + 2))


def test_verdict_stops_before_revising_a_response_judged_correct(client: TestClient) -> None:
    gen = generator(client)
    gen.verdict = "Correct"
    before = len(gen.calls)
    body = client.post("/refine", json={**ITEM, "rounds": 3, "stop": "verdict"}).json()
    assert body["stop_reason"] == "verdict" and body["rounds"] == []
    assert body["best"] == {
        "response": ITEM["response"],
        "reward": body["original"]["reward"],
        "round": 0,
    }
    assert body["usage"]["revision_tokens"] == 0
    assert len(gen.calls) == before + 2  # critiques and their verdicts; no revision


def test_no_improvement_stops_after_a_round_that_does_not_beat_the_best(
    client: TestClient,
) -> None:
    generator(client).verdict = "Incorrect"
    body = client.post(
        "/refine", json={**ITEM, "rounds": 4, "num_critiques": 1, "stop": "no_improvement"}
    ).json()
    rounds = body["rounds"]
    assert all(x["improved"] for x in rounds[:-1])
    if body["stop_reason"] == "no_improvement":
        assert not rounds[-1]["improved"]
    else:
        assert body["stop_reason"] == "rounds" and len(rounds) == 4


def test_the_fake_forces_a_round_without_improvement(client: TestClient) -> None:
    # Fake revisions repeat ("critique 0 of a N-token prompt"), so a second round's revision
    # scores what the first did, and no_improvement must stop there.
    generator(client).verdict = "Incorrect"
    body = client.post(
        "/refine", json={**ITEM, "rounds": 4, "num_critiques": 1, "stop": "no_improvement"}
    ).json()
    assert body["stop_reason"] == "no_improvement" and len(body["rounds"]) <= 3


def test_rounds_zero_scores_the_original_only(client: TestClient) -> None:
    body = client.post("/refine", json={**ITEM, "rounds": 0}).json()
    assert body["rounds"] == [] and body["stop_reason"] == "rounds"
    assert body["best"]["round"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rounds": 5}, "rounds"),
        ({"rounds": -1}, "rounds"),
        ({"candidates": 5}, "candidates"),
        ({"candidates": 0}, "candidates"),
        ({"num_critiques": 0}, "num_critiques"),
        ({"num_critiques": 17}, "num_critiques"),
        ({"max_revision_tokens": 5000}, "max_revision_tokens"),
        ({"revision_temperature": 9}, "revision_temperature"),
        ({"stop": "sometimes"}, "stop"),
        ({"response": "  "}, "response"),
        ({"prompt": []}, "prompt"),
        ({"policy": {"url": "http://x"}}, "policy.model"),
        ({"policy": {"url": "http://x", "model": "m", "api_key": "k"}}, "policy.api_key"),
        ({"policy": {"url": "http://example.com/v1", "model": "m"}}, "policy.url"),
    ],
)
def test_bad_input_names_the_field(client: TestClient, change: dict[str, Any], field: str) -> None:
    r = client.post("/refine", json={**ITEM, **change})
    assert r.status_code in (403, 422), r.text
    assert r.json()["error"]["field"] == field


LIMITS = PolicyLimits(
    allowlist=("https://policy.example.com/v1", "http://127.0.0.1:9"),
    allow_private=False,
    timeout_s=1.0,
    max_response_bytes=1000,
    api_key_env=None,
)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://policy.example.com/v1",
        "https://policy.example.com.evil.test/v1",
        "https://evil.test/?https://policy.example.com/v1",
        "https://user:pw@policy.example.com/v1",
        "https://policy.example.com/v10",
        "https://policy.example.com/v1/../admin",
        "https://policy.example.com/v1/%2e%2e/admin",
        "https://policy.example.com:8443/v1",
        "http://policy.example.com/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9",  # allow-listed, but loopback while private addresses are refused
        "http://[::1]:9",
        "https://policy.example.com/v1?x=1",
        "http://[not-an-ip/",
    ],
)
def test_hostile_policy_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_policy_url(url, LIMITS)
    assert caught.value.field == "policy.url"


def test_an_allowed_private_policy_url_passes_only_when_private_addresses_are_allowed() -> None:
    allowed = PolicyLimits(("http://127.0.0.1:9",), True, 1.0, 1000, None)
    check_policy_url("http://127.0.0.1:9/v1", allowed)
    with pytest.raises(InvalidRequest):
        check_policy_url("http://127.0.0.1:10/v1", allowed)
    with pytest.raises(InvalidRequest) as caught:
        check_policy_url("http://127.0.0.1:9/v1", PolicyLimits((), True, 1.0, 1000, None))
    assert caught.value.status == 403  # no allow-list: external policies are off


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"choices": []}',
        b'{"choices": [{"message": {"content": 3}}]}',
        b'{"choices": [{"text": "x"}]}',
        b"[" * 100_000,
    ],
)
def test_a_malformed_completion_is_a_policy_failure(raw: bytes) -> None:
    with pytest.raises(PolicyFailure):
        parse_completions(raw, 1)


def test_a_completion_parses_with_its_usage() -> None:
    raw = json.dumps(
        {
            "choices": [
                {"message": {"role": "assistant", "content": " 4 "}, "finish_reason": "stop"},
                {"message": {"role": "assistant", "content": "four"}, "finish_reason": "length"},
            ],
            "usage": {"completion_tokens": 6},
        }
    ).encode()
    out = parse_completions(raw, 2)
    assert [(c.text, c.num_tokens, c.finish_reason) for c in out] == [
        ("4", 3, "stop"),
        ("four", 3, "length"),
    ]


def _answer(server: Any, _body: dict[str, Any]) -> tuple[int, Any]:
    """What the test set on the server; "hang" answers late, after the policy timeout."""
    if server.answer == "hang":
        time.sleep(3)  # longer than the service's policy timeout
        server.answer = (200, {"choices": [{"message": {"content": "late"}}]})
    status, payload = server.answer
    return status, payload


@pytest.fixture()
def policy_server() -> Iterator[Any]:
    with chat_server(_answer) as server:
        server.answer = (
            200,
            {"choices": [{"message": {"content": "4"}, "finish_reason": "stop"}]},
        )
        yield server


def test_an_external_policy_revises_with_the_operators_key(
    checkpoint_root: Path, policy_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"http://127.0.0.1:{policy_server.server_address[1]}"
    monkeypatch.setenv("POLICY_KEY_FOR_TEST", "sk-operator")
    for c in _client(
        checkpoint_root,
        policy_allowlist=[base + "/v1"],
        policy_allow_private=True,
        policy_api_key_env="POLICY_KEY_FOR_TEST",
        policy_timeout_s=1.0,
    ):
        generator(c).verdict = "Incorrect"
        policy = {"url": base + "/v1", "model": "policy-under-training"}
        r = c.post("/refine", json={**ITEM, "rounds": 1, "stop": "never", "policy": policy})
        assert r.status_code == 200, r.text
        assert r.json()["rounds"][0]["candidates"][0]["response"] == "4"
        path, sent, auth = policy_server.seen[-1]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-operator"
        assert sent["model"] == "policy-under-training" and sent["n"] == 1
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["user", "assistant", "user"]
        assert sent["messages"][1]["content"] == ITEM["response"]
        assert "Overall judgment: Incorrect" in sent["messages"][2]["content"]
        # A broken policy is a 502 naming it, never a crash; the service goes on.
        answers = [(500, {"error": "boom"}), (200, b"{"), (200, b"x" * 5_000_000), (302, b"")]
        for answer in [*answers, "hang"]:
            policy_server.answer = answer
            r = c.post("/refine", json={**ITEM, "rounds": 1, "stop": "never", "policy": policy})
            assert r.status_code == 502 and r.json()["error"]["field"] == "policy", r.text
        assert c.get("/ready").status_code == 200
        text = c.get("/metrics").text
        assert "critic_rm_policy_failures_total 5.0" in text
        assert 'critic_rm_refine_stops_total{reason="rounds"} 1.0' in text


async def test_the_clients_refine_reads_the_gateways_answer(checkpoint_root: Path) -> None:
    app = create_app(make_settings(checkpoint_root), loader_for(checkpoint_root))
    async with running(app):
        app.state.service.runtime.generator.verdict = "Incorrect"
        served = app.state.service.runtime.model_version
        transport = httpx.ASGITransport(app=app)
        async with AsyncRewardClient("http://t", transport=transport) as rm:
            out = await rm.refine(
                [{"role": "user", "content": "What is 2+2?"}],
                "5",
                rounds=2,
                candidates=2,
                num_critiques=2,
                stop="never",
            )
            with pytest.raises(TypeError, match=r"'round'.*'rounds'"):
                await rm.refine("q", "r", round=2)  # type: ignore[call-arg]
    assert out.stop_reason == "rounds" and [r.round for r in out.rounds] == [1, 2]
    assert out.model_version == served
    assert all(len(r.candidates) == 2 for r in out.rounds)
    assert out.original.response == "5" and len(out.original.critiques) == 2
    assert out.rounds[0].critique.verdict == "Incorrect"
    seen = [out.original, *[c for r in out.rounds for c in r.candidates]]
    assert out.best_reward == max(s.reward for s in seen)
    assert out.revision_tokens == 2 * (5 + 6) and out.usage.critique_tokens > 0


def test_the_sync_client_checks_refine_option_names() -> None:
    with RewardClient("http://127.0.0.1:9") as rm, pytest.raises(TypeError, match="'stop'"):
        rm.refine("q", "r", stopp="never")  # type: ignore[call-arg]


def test_a_round_that_did_not_help_is_not_repeated_with_the_same_critique(
    client: TestClient,
) -> None:
    generator(client).verdict = "Incorrect"
    body = client.post(
        "/refine", json={**ITEM, "rounds": 4, "num_critiques": 2, "stop": "never"}
    ).json()
    best_round = 0
    for r in body["rounds"]:
        scored = body["original"] if best_round == 0 else body["rounds"][best_round - 1]
        best = scored if best_round == 0 else max(scored["candidates"], key=lambda c: c["reward"])
        attempt = r["round"] - 1 - best_round
        # The critiques of the best, in order; the round uses the attempt-th, cycling.
        assert r["critique"]["text"] == best["critiques"][attempt % 2]["text"]
        if r["improved"]:
            best_round = r["round"]
