"""What triggers a reload: the checkpoint root's `current` pointer moving, and other replicas
announcing a reload on a Redis channel (so every replica converges on one version)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from service.checkpoint.store import CheckpointRoot
from service.model.manager import ModelManager

log = logging.getLogger(__name__)


class ReloadWatcher:
    """Background tasks that keep a replica on the version it should serve."""

    def __init__(self, model: ModelManager) -> None:
        self.model = model
        self.settings = model.settings
        self.replica_id = uuid.uuid4().hex
        self._failed_pointer: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.settings.reload_poll_s > 0:
            self._tasks.append(asyncio.create_task(self._follow_current(), name="follow-current"))
        if self.settings.redis_url:
            self._tasks.append(asyncio.create_task(self._subscribe(), name="reload-subscriber"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _follow_current(self) -> None:
        root = CheckpointRoot(self.settings.checkpoint_root)
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            model = self.model
            if not model.follow_current or not model.health.ready or model.runtime is None:
                continue
            pointer = await asyncio.to_thread(root.current_version)
            if pointer in (None, model.runtime.model_version, self._failed_pointer):
                continue
            try:
                await model.reload(pointer)
                self._failed_pointer = None
            except Exception:
                # Do not retry a broken version every poll; a new pointer value is tried again.
                self._failed_pointer = pointer

    async def announce(self, version: str | None) -> None:
        """Tell the other replicas to load `version` (None: follow `current`)."""
        if not self.settings.redis_url:
            return
        import redis.asyncio as aioredis

        client = aioredis.from_url(
            self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            message = json.dumps({"version": version, "origin": self.replica_id})
            await client.publish(self.settings.reload_channel, message)
        except Exception as exc:  # the local reload stands; replicas still follow `current`
            log.warning("could not announce reload on Redis: %s", exc)
        finally:
            await client.aclose()

    async def _subscribe(self) -> None:
        import redis.asyncio as aioredis

        backoff = 1.0
        while True:
            client = aioredis.from_url(self.settings.redis_url or "", socket_connect_timeout=2)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.settings.reload_channel)
                backoff = 1.0
                async for message in pubsub.listen():
                    await self._on_message(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reload channel unavailable (%s); retrying in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _on_message(self, data: object) -> None:
        try:
            payload = json.loads(data if isinstance(data, str | bytes) else "")
            version, origin = payload.get("version"), payload.get("origin")
        except (ValueError, AttributeError):
            log.warning("ignoring malformed reload message %r", data)
            return
        if origin == self.replica_id:
            return
        self.model.pin(version)
        log.info("replica %s announced a reload to %s", origin, version or "current")
        with contextlib.suppress(Exception):  # failures are recorded by reload() itself
            await self.model.reload(version)
