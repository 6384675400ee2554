from __future__ import annotations

from typing import Any

import pytest

from service.cache.store import MemoryCache, RedisCache
from service.cache.store import cache_key as store_cache_key
from service.contract.options import ScoreOptions
from service.observability.metrics import Metrics

BASE: dict[str, Any] = dict(
    model_version="v1",
    templates_digest="t1",
    messages=[{"role": "user", "content": "2+2?"}],
    response="4",
    num_critiques=4,
    temperature=0.8,
    top_p=0.95,
    max_critique_tokens=64,
    truncate_prompt=False,
)


def cache_key(
    *,
    num_critiques: int,
    temperature: float,
    top_p: float,
    max_critique_tokens: int,
    truncate_prompt: bool,
    **rest: Any,
) -> str:
    """The key of these fields, the options given as the ScoreOptions the service builds."""
    options = ScoreOptions(
        num_critiques, temperature, top_p, max_critique_tokens, truncate_prompt=truncate_prompt
    )
    return store_cache_key(options=options, **rest)


def test_use_cache_is_not_part_of_the_key() -> None:
    kept = ScoreOptions(4, 0.8, 0.95, 64, use_cache=True)
    rest = {k: BASE[k] for k in ("model_version", "templates_digest", "messages", "response")}
    off = ScoreOptions(4, 0.8, 0.95, 64, use_cache=False)
    assert store_cache_key(options=kept, **rest) == store_cache_key(options=off, **rest)


@pytest.mark.parametrize(
    "change",
    [
        {"model_version": "v2"},
        {"templates_digest": "t2"},
        {"messages": [{"role": "user", "content": "2+3?"}]},
        {"messages": [{"role": "system", "content": "2+2?"}]},
        {"response": "5"},
        {"num_critiques": 2},
        {"temperature": 0.7},
        {"top_p": 0.9},
        {"max_critique_tokens": 32},
        {"truncate_prompt": True},
    ],
)
def test_everything_that_changes_a_result_changes_the_key(change: dict[str, Any]) -> None:
    assert cache_key(**BASE) != cache_key(**{**BASE, **change})


def test_key_is_stable_and_starts_with_the_model_version() -> None:
    assert cache_key(**BASE) == cache_key(**dict(BASE))
    assert cache_key(**BASE).startswith("crm:v1:v1:")


def test_sampling_parameters_do_not_matter_without_critiques() -> None:
    zero = {**BASE, "num_critiques": 0}
    assert cache_key(**zero) == cache_key(**{**zero, "temperature": 0.1, "max_critique_tokens": 9})


async def test_memory_cache_is_a_bounded_lru() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set_many([("a", {"v": 1}), ("b", {"v": 2})])
    assert await cache.get_many(["a"]) == [{"v": 1}]  # a is now most recent
    await cache.set_many([("c", {"v": 3})])
    assert await cache.get_many(["a", "b", "c"]) == [{"v": 1}, None, {"v": 3}]


async def test_memory_cache_of_size_zero_stores_nothing() -> None:
    cache = MemoryCache(max_entries=0)
    await cache.set_many([("a", {"v": 1})])
    assert await cache.get_many(["a"]) == [None]


async def test_redis_cache_round_trip_against_real_redis(redis_url: str) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_url, timeout_s=1.0, ttl_s=60, metrics=metrics)
    try:
        assert await cache.ping(), f"no Redis at {redis_url} (make test starts one)"
        key = cache_key(**{**BASE, "model_version": "redis-test"})
        await cache.set_many([(key, {"reward": 1.5, "critiques": [["ok", 1, "stop"]]})])
        assert await cache.get_many([key, key + "-missing"]) == [
            {"reward": 1.5, "critiques": [["ok", 1, "stop"]]},
            None,
        ]
        ttl = await cache._client.ttl(key)
        assert 0 < ttl <= 60
    finally:
        await cache.close()


async def test_redis_cache_fails_open_when_redis_is_unreachable() -> None:
    metrics = Metrics()
    cache = RedisCache("redis://127.0.0.1:1/0", timeout_s=0.2, ttl_s=60, metrics=metrics)
    try:
        assert await cache.get_many(["k"]) == [None]
        await cache.set_many([("k", {"v": 1})])
        assert metrics.cache_errors.labels(op="get")._value.get() == 1
        assert metrics.cache_errors.labels(op="set")._value.get() == 1
    finally:
        await cache.close()
