"""Result cache: Redis when configured, an in-process LRU otherwise. Fail-open: a cache error is
counted and treated as a miss, never as a failed request."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from service.contract.options import ScoreOptions
from service.observability.metrics import Metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "crm:v1:"


def cache_key(
    *,
    model_version: str,
    templates_digest: str,
    messages: Sequence[dict[str, str]],
    response: str,
    options: ScoreOptions,
) -> str:
    """Everything that changes a result goes into the key; the model version comes first so one
    version's results are never served for another."""
    payload = json.dumps(
        {"t": templates_digest, "x": list(messages), "y": response, **options.cache_fields()},
        sort_keys=True,
        ensure_ascii=False,
    ).encode()
    return f"{KEY_PREFIX}{model_version}:{hashlib.sha256(payload).hexdigest()}"


class ResultCache(Protocol):
    """Get/set of JSON-able results by key."""

    backend: str

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        """The stored JSON value of each key, or None for a miss."""
        ...

    async def set_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """Bounded in-process LRU."""

    backend = "memory"

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        out: list[Any] = []
        for key in keys:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            out.append(value)
        return out

    async def set_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if self.max_entries <= 0:
            return
        for key, value in items:
            self._data[key] = value
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis (redis-py asyncio) with short timeouts; errors degrade to misses.

    Each connect and each read is bounded by redis-py's socket timeouts (`timeout_s`); a stalled
    Redis costs a request about two of them (lookup and write)."""

    backend = "redis"

    def __init__(self, url: str, timeout_s: float, ttl_s: int, metrics: Metrics) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.metrics = metrics

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        try:
            raw = await self._client.mget(list(keys))
        except Exception as exc:  # fail open: a sick cache must not fail scoring
            self._error("get", exc)
            return [None] * len(keys)
        return [self._decode(v) for v in raw]

    def _decode(self, value: bytes | str | None) -> Any:
        """A stored value that is not JSON counts as an error and reads as a miss (the fresh
        result then overwrites it); what the JSON holds is checked by the caller."""
        if value is None:
            return None
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
            self._error("decode", exc)
            return None

    async def set_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if not items:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, json.dumps(value), ex=self.ttl_s)
            await pipe.execute()
        except Exception as exc:
            self._error("set", exc)

    def _error(self, op: str, exc: Exception) -> None:
        self.metrics.cache_errors.labels(op=op).inc()
        log.warning(
            "redis cache %s failed (%s: %s); continuing without it", op, type(exc).__name__, exc
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._client.aclose()
