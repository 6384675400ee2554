"""Gateway logic on fake engines: batching, caching, de-duplication, validation, errors.
(The real-engine path is covered by tests/integration.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.model.runtime import ModelRuntime
from service.settings import Settings
from tests.fakes import FakeGenerator, FakeScorer, loader_for, wait_ready


def make_settings(root: Path, **kw: object) -> Settings:
    return Settings(checkpoint_root=root, warmup=False, max_model_len=512, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def client(checkpoint_root: Path) -> Iterator[TestClient]:
    app = create_app(
        make_settings(checkpoint_root, max_items_per_request=8), loader_for(checkpoint_root)
    )
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def engines(c: TestClient) -> tuple[FakeGenerator, FakeScorer]:
    rt = c.app.state.service.runtime  # type: ignore[attr-defined]
    return rt.generator, rt.scorer


ITEM = {"prompt": "What is 2+2?", "response": "4"}


def test_score_shapes_and_mean(client: TestClient) -> None:
    r = client.post("/score", json={"items": [ITEM], "num_critiques": 3, "return_critiques": True})
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["results"][0]
    assert len(res["critique_rewards"]) == 3 and len(res["critiques"]) == 3
    assert res["reward"] == pytest.approx(sum(res["critique_rewards"]) / 3)
    assert res["cached"] is False
    assert body["usage"]["critique_tokens"] == 5 + 6 + 7
    assert body["usage"]["prompt_tokens"] > 0
    trained = client.app.state.service.runtime.manifest.reward_head_trained  # type: ignore[attr-defined]
    assert any("untrained" in w for w in body["warnings"]) is not trained
    assert body["model_version"] == client.get("/info").json()["model_version"]


def test_an_untrained_head_is_flagged_on_every_response(tiny_llama: Path, tmp_path: Path) -> None:
    from service.checkpoint.bootstrap import bootstrap

    bootstrap(tmp_path, tiny_llama)  # reward head initialised, marked untrained
    app = create_app(make_settings(tmp_path), loader_for(tmp_path))
    with TestClient(app) as c:
        wait_ready(c)
        body = c.post("/score", json={"items": [ITEM], "num_critiques": 1}).json()
        assert any("untrained" in w for w in body["warnings"])
        assert any("untrained" in w for w in c.get("/ready").json()["warnings"])
        assert c.get("/info").json()["reward_head_trained"] is False


def test_zero_critiques_scores_directly(client: TestClient) -> None:
    gen, _ = engines(client)
    r = client.post("/score", json={"items": [ITEM], "num_critiques": 0})
    res = r.json()["results"][0]
    assert res["critique_rewards"] == [] and res["reward_std"] == 0.0
    assert gen.calls == []


def test_repeat_is_served_from_cache(client: TestClient) -> None:
    gen, scorer = engines(client)
    first = client.post("/score", json={"items": [ITEM], "num_critiques": 2}).json()
    second = client.post("/score", json={"items": [ITEM], "num_critiques": 2}).json()
    assert second["results"][0]["cached"] is True
    assert second["results"][0]["reward"] == first["results"][0]["reward"]
    assert len(gen.calls) == 1 and len(scorer.calls) == 1
    fresh = client.post("/score", json={"items": [ITEM], "num_critiques": 2, "use_cache": False})
    assert fresh.json()["results"][0]["cached"] is False
    assert len(scorer.calls) == 2


def test_identical_items_in_one_request_are_computed_once(client: TestClient) -> None:
    gen, scorer = engines(client)
    other = {"prompt": "What is 3+3?", "response": "6"}
    r = client.post("/score", json={"items": [ITEM, other, ITEM, ITEM], "num_critiques": 2})
    results = r.json()["results"]
    assert results[0] == results[2] == results[3]
    assert gen.calls == [2]  # two distinct prompts in one engine call
    assert scorer.calls == [4]


def test_critique_endpoint(client: TestClient) -> None:
    r = client.post("/critique", json={**ITEM, "n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["finish_reason"] for c in body["critiques"]] == ["stop", "stop"]
    assert set(body) == {"model_version", "critiques", "reward", "cached", "usage", "warnings"}
    assert body["reward"] == pytest.approx(sum(c["reward"] for c in body["critiques"]) / 2)


def test_structured_critiques_are_closed_by_a_constrained_verdict(client: TestClient) -> None:
    from service.checkpoint.critique_format import VERDICT_REGEX

    gen, _ = engines(client)
    before = len(gen.calls)
    r = client.post("/critique", json={**ITEM, "n": 2, "format": "structured"})
    assert r.status_code == 200, r.text
    body = r.json()
    # One request samples the free text, one more decodes every verdict under the constraint.
    assert len(gen.calls) == before + 2 and gen.calls[-1] == 2
    free, closing = gen.specs[-2], gen.specs[-1]
    assert all(s.regex == VERDICT_REGEX and s.temperature == 0.0 for s in closing)
    budget = client.app.state.service.runtime.manifest.sampling.max_critique_tokens  # type: ignore[attr-defined]
    assert free[0].structured and free[0].max_tokens < budget  # room for the verdict line
    for c in body["critiques"]:
        assert c["verdict"] in ("Correct", "Incorrect")
        assert c["text"].endswith(f"\nOverall judgment: {c['verdict']}")
        assert c["analysis"].startswith("critique ") and c["suggestions"] == ""
    assert body["usage"]["critique_tokens"] == (5 + 2) + (6 + 2)
    # The reward reads the whole structured critique, so it is cached apart from plain text.
    plain = client.post("/critique", json={**ITEM, "n": 2}).json()
    assert plain["cached"] is False
    assert set(plain["critiques"][0]) == {"text", "reward", "finish_reason"}
    assert plain["critiques"][0]["reward"] != body["critiques"][0]["reward"]
    again = client.post("/critique", json={**ITEM, "n": 2, "format": "structured"}).json()
    assert again["cached"] is True and again["critiques"] == body["critiques"]


def test_an_unknown_critique_format_names_the_field(client: TestClient) -> None:
    r = client.post("/critique", json={**ITEM, "format": "yaml"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "format"


async def test_concurrent_single_item_requests_become_few_engine_calls(
    checkpoint_root: Path,
) -> None:
    app = create_app(
        make_settings(checkpoint_root, batch_max_items=32, batch_max_wait_ms=50),
        loader_for(checkpoint_root),
    )
    async with app.router.lifespan_context(app):
        await app.state.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            reqs = [
                c.post(
                    "/score",
                    json={"items": [{"prompt": f"q{i}", "response": f"a{i}"}], "num_critiques": 2},
                )
                for i in range(64)
            ]
            responses = await asyncio.gather(*reqs)
        assert all(r.status_code == 200 for r in responses)
        gen = app.state.service.runtime.generator
        assert sum(gen.calls) == 64
        assert len(gen.calls) <= 4, gen.calls


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"prompt": "", "response": "x"}]}, "items[0].prompt"),
        ({"items": [ITEM, {"prompt": "q", "response": "   "}]}, "items[1].response"),
        ({"items": [{"prompt": [], "response": "x"}]}, "items[0].prompt"),
        ({"items": [{"prompt": "q"}]}, "items[0].response"),
        ({"items": []}, "items"),
        ({"items": [ITEM] * 9}, "items"),
        ({"items": [ITEM], "num_critiques": 17}, "num_critiques"),
        ({"items": [ITEM], "num_critiques": -1}, "num_critiques"),
        ({"items": [ITEM], "temperature": 0}, "temperature"),
        ({"items": [ITEM], "temperature": 5.0}, "temperature"),
        ({"items": [ITEM], "max_critique_tokens": 100000}, "max_critique_tokens"),
        ({"items": [ITEM], "bogus": 1}, "bogus"),
        ({"items": [{"prompt": "word " * 600, "response": "x"}]}, "items[0].prompt"),
        (
            {"items": [ITEM, {"prompt": "q", "response": "word " * 600}], "truncate_prompt": True},
            "items[1].response",
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/score", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field, err
    assert field in err["message"]


def test_malformed_json_is_a_400(client: TestClient) -> None:
    r = client.post("/score", content=b'{"items": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"


def test_critique_n_above_limit_names_n(client: TestClient) -> None:
    r = client.post("/critique", json={**ITEM, "n": 99})
    assert r.status_code == 422 and r.json()["error"]["field"] == "n"


def test_long_prompt_is_left_truncated_on_request(client: TestClient) -> None:
    words = " ".join(f"w{i}" for i in range(600))
    r = client.post(
        "/score", json={"items": [{"prompt": words, "response": "ok"}], "truncate_prompt": True}
    )
    assert r.status_code == 200, r.text
    assert any("items[0].prompt was left-truncated" in w for w in r.json()["warnings"])


def test_engine_failure_is_a_503_and_the_service_recovers(client: TestClient) -> None:
    gen, _ = engines(client)
    gen.fail_next = 1
    r = client.post("/score", json={"items": [ITEM], "num_critiques": 1, "use_cache": False})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_error"
    r = client.post("/score", json={"items": [ITEM], "num_critiques": 1, "use_cache": False})
    assert r.status_code == 200


def test_not_ready_until_loaded(checkpoint_root: Path) -> None:
    gate = threading.Event()

    async def slow(settings: Settings, version: str | None = None) -> ModelRuntime:
        await asyncio.to_thread(gate.wait, 10)
        return await loader_for(checkpoint_root)(settings, version)

    app = create_app(make_settings(checkpoint_root), slow)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 503
        r = c.post("/score", json={"items": [ITEM]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        gate.set()
        wait_ready(c)
        assert c.post("/score", json={"items": [ITEM]}).status_code == 200


def test_failed_load_reports_the_error(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as c:
        for _ in range(100):
            if c.get("/ready").json()["status"] == "failed":
                break
            threading.Event().wait(0.05)
        body = c.get("/ready").json()
        assert body["status"] == "failed" and "no `current` version" in body["error"]
        assert c.get("/info").json()["status"] == "failed"


def test_metrics_are_exported(client: TestClient) -> None:
    client.post("/score", json={"items": [ITEM], "num_critiques": 2})
    client.post("/score", json={"items": [ITEM], "num_critiques": 2})
    text = client.get("/metrics").text
    for name in (
        "critic_rm_request_duration_seconds_bucket",
        'critic_rm_requests_total{route="/score",status="200"}',
        "critic_rm_batch_size_bucket",
        "critic_rm_queue_depth",
        "critic_rm_queue_wait_seconds_bucket",
        "critic_rm_generate_seconds_bucket",
        "critic_rm_score_seconds_bucket",
        "critic_rm_critique_tokens_total",
        'critic_rm_cache_hits_total{backend="memory"} 1.0',
        'critic_rm_cache_misses_total{backend="memory"} 1.0',
        "critic_rm_reward_bucket",
        "critic_rm_model_info{",
        "process_start_time_seconds",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    # The queue's limit beside its depth: the saturation alert divides one by the other.
    assert (
        f"critic_rm_queue_limit {float(Settings.model_fields['max_queue_items'].default)}" in text
    )


def test_ready_only_after_a_warm_up_through_both_engines(checkpoint_root: Path) -> None:
    gate = threading.Event()
    seen: list[str] = []

    async def load(settings: Settings, version: str | None = None) -> ModelRuntime:
        runtime = await loader_for(checkpoint_root)(settings, version)
        original = runtime.generator.generate

        async def gated(prompts, specs):  # type: ignore[no-untyped-def]
            seen.append("warm-up")
            await asyncio.to_thread(gate.wait, 10)
            return await original(prompts, specs)

        runtime.generator.generate = gated  # type: ignore[method-assign]
        return runtime

    app = create_app(
        Settings(checkpoint_root=checkpoint_root, warmup=True, max_model_len=512), load
    )
    with TestClient(app) as c:
        for _ in range(100):
            if seen:
                break
            threading.Event().wait(0.02)
        assert seen == ["warm-up"]
        assert c.get("/ready").status_code == 503
        gate.set()
        wait_ready(c)
        _, scorer = engines(c)
        assert scorer.calls, "warm-up did not reach the scorer"


def test_every_failure_reason_the_gateway_counts_is_exported_from_the_start() -> None:
    """A reason first counted after a start would be invisible to rate() and increase() for
    one scrape; every literal reason in the service must be in FAILURE_REASONS."""
    import re

    from service.observability.metrics import FAILURE_REASONS

    root = Path(__file__).resolve().parents[2] / "service"
    used = {
        m
        for path in root.rglob("*.py")
        for m in re.findall(r'request_failures\.labels\("(\w+)"\)', path.read_text())
    }
    assert used and used <= set(FAILURE_REASONS), used - set(FAILURE_REASONS)
