"""Poisoned entries in the shared Redis cache (a corrupt write, another program's data, a NaN):
each is a counted miss that the fresh result overwrites, never a 500 or a non-finite reward."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.cache.store import KEY_PREFIX
from service.settings import Settings
from tests.fakes import loader_for, wait_ready

GOOD = {
    "reward": 1.0,
    "critique_rewards": [1.0],
    "reward_std": 0.0,
    "critiques": [["fine", 1, "stop"]],
    "prompt_tokens": 3,
    "critique_tokens": 1,
}
POISON = {
    "not-json": b"not-json{",
    "wrong-type": b'{"reward": "abc"}',
    "a-list": b"[]",
    "nan": json.dumps({**GOOD, "reward": float("nan")}).encode(),
    "infinite-critique-reward": json.dumps({**GOOD, "critique_rewards": [float("inf")]}).encode(),
    "wrong-critique-count": json.dumps({**GOOD, "critiques": [], "critique_rewards": []}).encode(),
    "bool-count": json.dumps({**GOOD, "prompt_tokens": True}).encode(),
    "bad-utf8": b'{"reward": "\xff"}',
    "huge-integer": json.dumps({**GOOD, "reward": 10**400}).encode(),
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
}


def decode_errors(c: TestClient) -> float:
    value = c.app.state.metrics.cache_errors.labels(op="decode")._value.get()  # type: ignore[attr-defined]
    return float(value)


@pytest.mark.parametrize("poison", sorted(POISON))
def test_a_poisoned_entry_is_a_counted_miss_then_overwritten(
    checkpoint_root: Path, redis_url: str, poison: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    settings = Settings(
        checkpoint_root=checkpoint_root, warmup=False, max_model_len=512, redis_url=redis_url
    )
    body = {
        "items": [{"prompt": f"poison {uuid.uuid4().hex}", "response": "a"}],
        "num_critiques": 1,
    }
    with TestClient(create_app(settings, loader_for(checkpoint_root))) as c:
        wait_ready(c)
        before = set(client.scan_iter(f"{KEY_PREFIX}*"))
        first = c.post("/score", json=body)
        assert first.status_code == 200, first.text
        (key,) = set(client.scan_iter(f"{KEY_PREFIX}*")) - before
        client.set(key, POISON[poison])
        errors = decode_errors(c)

        r = c.post("/score", json=body)
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["cached"] is False and math.isfinite(result["reward"])
        assert result["reward"] == first.json()["results"][0]["reward"]
        assert decode_errors(c) == errors + 1
        stored = json.loads(client.get(key) or b"null")
        assert stored["reward"] == result["reward"], "the bad entry was not overwritten"

        again = c.post("/score", json=body).json()["results"][0]
        assert again["cached"] is True and again["reward"] == result["reward"]
        assert decode_errors(c) == errors + 1
