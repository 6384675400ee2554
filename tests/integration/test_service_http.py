"""The whole request path on real vLLM engines, over HTTP."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.checkpoint.store import CheckpointVersion
from service.contract.formatting import PromptFormatter
from service.engines.torch_scorer import TorchRewardScorer
from tests.integration.conftest import MAX_MODEL_LEN, LiveServer

pytestmark = pytest.mark.engine

PAIRS = [
    ("What is 17 * 3?", "17 * 3 = 51."),
    ("Name the capital of Australia.", "The capital of Australia is Sydney."),
]
FAST = {"num_critiques": 2, "max_critique_tokens": 16}


def items(pairs: list[tuple[str, str]] = PAIRS) -> list[dict[str, str]]:
    return [{"prompt": p, "response": r} for p, r in pairs]


def metric(text: str, name: str) -> float:
    """Sum of all samples of `name` (any labels) in a Prometheus exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


@pytest.fixture(scope="module")
def torch_scorer(served_version: CheckpointVersion) -> TorchRewardScorer:
    return TorchRewardScorer.load(served_version.scorer_path, "float32")


def test_ready_and_info_describe_the_served_checkpoint(
    http: httpx.Client, served_version: CheckpointVersion
) -> None:
    ready = http.get("/ready").json()
    info = http.get("/info").json()
    assert ready["model_version"] == info["model_version"] == served_version.manifest.model_version
    trained = served_version.manifest.reward_head_trained
    assert info["reward_head_trained"] is trained
    # The untrained-head warning appears exactly when the served head is untrained.
    assert any("untrained" in w for w in ready["warnings"] + info["warnings"]) is not trained
    assert info["reward_stats"] == (
        served_version.manifest.reward_stats.model_dump()
        if served_version.manifest.reward_stats
        else None
    )
    assert info["cache"]["backend"] == "redis"
    assert info["limits"]["max_model_len"] == MAX_MODEL_LEN


def test_score_returns_m_critique_rewards_and_their_mean(http: httpx.Client) -> None:
    r = http.post(
        "/score", json={"items": items(), **FAST, "return_critiques": True, "use_cache": False}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 2
    for res in body["results"]:
        assert len(res["critique_rewards"]) == 2
        assert len(res["critiques"]) == 2 and all(
            isinstance(c, str) and c for c in res["critiques"]
        )
        assert res["reward"] == pytest.approx(sum(res["critique_rewards"]) / 2, abs=1e-6)
        assert res["cached"] is False
    assert 0 < body["usage"]["critique_tokens"] <= 2 * 2 * 16
    assert body["usage"]["prompt_tokens"] > 0


def test_standard_rm_mode_is_repeatable(http: httpx.Client) -> None:
    req = {"items": items(), "num_critiques": 0, "use_cache": False}
    a = http.post("/score", json=req).json()["results"]
    b = http.post("/score", json=req).json()["results"]
    assert [x["reward"] for x in a] == pytest.approx([x["reward"] for x in b], abs=1e-5)
    assert all(x["critique_rewards"] == [] for x in a)


def test_vllm_scorer_matches_torch_reference_in_float32(
    http: httpx.Client, formatter: PromptFormatter, torch_scorer: TorchRewardScorer
) -> None:
    # m = 0: [x; y; reward token]
    direct = http.post("/score", json={"items": items(), "num_critiques": 0}).json()["results"]
    seqs = [
        formatter.score_ids(formatter.score_prefix_ids([{"role": "user", "content": p}], r), None)
        for p, r in PAIRS
    ]
    ref = torch_scorer.score_sync(seqs)
    for got, want in zip([x["reward"] for x in direct], ref, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    # m = 2: [x; y; critique; reward token] for the critiques the service sampled
    body = http.post("/score", json={"items": items(), **FAST, "return_critiques": True}).json()
    for (p, r), res in zip(PAIRS, body["results"], strict=True):
        prefix = formatter.score_prefix_ids([{"role": "user", "content": p}], r)
        ref = torch_scorer.score_sync([formatter.score_ids(prefix, c) for c in res["critiques"]])
        assert res["critique_rewards"] == pytest.approx(ref, abs=1e-3)


def test_repeat_is_a_cache_hit_through_redis(http: httpx.Client, redis_url: str) -> None:
    import redis

    req = {"items": [{"prompt": "Is 91 prime?", "response": "No, 91 = 7 * 13."}], **FAST}
    first = http.post("/score", json=req).json()["results"][0]
    second = http.post("/score", json=req).json()["results"][0]
    assert first["cached"] is False and second["cached"] is True
    assert second["reward"] == first["reward"]
    assert second["critique_rewards"] == first["critique_rewards"]
    model_version = http.get("/info").json()["model_version"]
    keys = redis.Redis.from_url(redis_url).keys(f"crm:v1:{model_version}:*")
    assert keys, "the result was not written to Redis"


def test_critique_endpoint_returns_n_scored_critiques(http: httpx.Client) -> None:
    body = {
        "prompt": [{"role": "user", "content": "Give an even prime."}],
        "response": "2",
        "n": 3,
        "max_critique_tokens": 12,
        "use_cache": False,
    }
    r = http.post("/critique", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["critiques"]) == 3
    assert all(c["finish_reason"] in ("stop", "length") and c["text"] for c in out["critiques"])
    assert out["reward"] == pytest.approx(sum(c["reward"] for c in out["critiques"]) / 3, abs=1e-6)


def test_structured_critiques_end_in_a_decoded_verdict(http: httpx.Client) -> None:
    body = {
        "prompt": [{"role": "user", "content": "Give an even prime."}],
        "response": "4",
        "n": 2,
        "max_critique_tokens": 24,
        "format": "structured",
        "use_cache": False,
    }
    r = http.post("/critique", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    for c in out["critiques"]:
        # The real engine decodes the verdict under the constraint: it is always one of the two.
        assert c["verdict"] in ("Correct", "Incorrect"), c
        assert c["text"].endswith(f"Overall judgment: {c['verdict']}")
        assert isinstance(c["analysis"], str) and isinstance(c["suggestions"], str)
    # The whole critique, verdict line included, stays within the critique budget.
    assert out["usage"]["critique_tokens"] <= 2 * 24


def test_prefix_cache_shares_an_items_prompt_across_its_critiques(http: httpx.Client) -> None:
    before = http.get("/metrics").text
    long_prompt = "Summarise this text. " + " ".join(
        f"Sentence {i} talks about topic {i % 7}." for i in range(60)
    )
    req = {
        "items": [{"prompt": long_prompt, "response": "It lists topics."}],
        "num_critiques": 4,
        "max_critique_tokens": 8,
        "use_cache": False,
    }
    assert http.post("/score", json=req).status_code == 200
    after = http.get("/metrics").text
    name = 'critic_rm_prompt_tokens_total{engine="scorer",kind="cached"}'
    cached = metric(after, name) - metric(before, name)
    # 4 sequences share a prefix of > 600 tokens; at least the 3 later ones reuse whole blocks.
    assert cached >= 3 * 256, cached


def test_concurrent_single_item_requests_are_batched(
    live_server: LiveServer, http: httpx.Client
) -> None:
    before = metric(http.get("/metrics").text, "critic_rm_batch_size_count")

    def one(i: int) -> int:
        with live_server.client() as c:
            req = {
                "items": [{"prompt": f"Add {i} and {i}.", "response": f"{2 * i}"}],
                "num_critiques": 1,
                "max_critique_tokens": 4,
                "use_cache": False,
            }
            return c.post("/score", json=req).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [200] * 16
    batches = metric(http.get("/metrics").text, "critic_rm_batch_size_count") - before
    assert batches <= 6, f"16 concurrent requests ran as {batches} engine batches"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"items": [{"prompt": " ", "response": "x"}]}, 422, "items[0].prompt"),
        ({"items": [{"prompt": "q", "response": ""}]}, 422, "items[0].response"),
        ({"items": [{"prompt": "q", "response": "r"}] * 513}, 422, "items"),
        ({"items": [{"prompt": "q", "response": "r"}], "num_critiques": 17}, 422, "num_critiques"),
        (
            {"items": [{"prompt": "word " * 1100, "response": "r"}], "num_critiques": 0},
            422,
            "items[0].prompt",
        ),
    ],
)
def test_bad_input_is_refused_with_the_field_named(
    http: httpx.Client, body: dict, status: int, field: str
) -> None:
    r = http.post("/score", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    r = http.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


def test_too_long_prompt_is_left_truncated_when_asked(http: httpx.Client) -> None:
    body = {
        "items": [{"prompt": "word " * 1100, "response": "r"}],
        "num_critiques": 0,
        "truncate_prompt": True,
    }
    r = http.post("/score", json=body)
    assert r.status_code == 200, r.text
    assert any("left-truncated" in w for w in r.json()["warnings"])


def test_openrlhf_get_reward_on_real_engines(
    live_server: LiveServer, http: httpx.Client, formatter: PromptFormatter
) -> None:
    import asyncio

    import aiohttp

    tok = formatter.tokenizer
    convs = [
        ([{"role": "user", "content": f"What is {i} + {i}?"}], f"It is {2 * i}.") for i in range(6)
    ]
    prompts = [
        tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in convs
    ]
    queries = [p + r + tok.eos_token for p, (_, r) in zip(prompts, convs, strict=True)]

    async def run() -> list[list[float]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:

            async def one(q: str, p: str) -> list[float]:
                body = {"query": [q], "prompts": [p], "labels": [None]}
                async with session.post(f"{live_server.url}/get_reward", json=body) as resp:
                    resp.raise_for_status()
                    return list((await resp.json())["rewards"])

            return await asyncio.gather(*(one(q, p) for q, p in zip(queries, prompts, strict=True)))

    rewards = asyncio.run(run())
    assert all(len(r) == 1 for r in rewards)
    # The same conversations through /score (same defaults, truncate_prompt as /get_reward uses):
    # identical cache keys, so the very same results come back.
    direct = http.post(
        "/score",
        json={"items": [{"prompt": m, "response": r} for m, r in convs], "truncate_prompt": True},
    ).json()["results"]
    assert all(d["cached"] for d in direct)
    assert [d["reward"] for d in direct] == [r[0] for r in rewards]
