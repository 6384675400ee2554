"""Refuse early under load: a request whose items do not fit the queue gets a 429 at once,
with a Retry-After estimated from how fast batches drain."""

from __future__ import annotations

import math
from typing import Any

from service.observability.metrics import Metrics
from service.scoring.batcher import MicroBatcher
from service.scoring.errors import Overloaded
from service.scoring.runner import BatchRunner


class Admission:
    """The queue limit, checked against the batcher's depth."""

    def __init__(
        self,
        batcher: MicroBatcher[Any, Any],
        runner: BatchRunner,
        metrics: Metrics,
        *,
        max_queue_items: int,
        batch_max_items: int,
    ) -> None:
        self.batcher = batcher
        self.runner = runner
        self.metrics = metrics
        self.max_queue_items = max_queue_items
        self.batch_max_items = batch_max_items

    def admit(self, n: int) -> None:
        """429 unless `n` more items fit the queue."""
        depth = self.batcher.depth
        if depth + n > self.max_queue_items:
            self.metrics.request_failures.labels("queue_full").inc()
            raise Overloaded(
                f"queue full ({depth} items waiting, {n} more asked for, limit "
                f"{self.max_queue_items})",
                self.retry_after_s(depth),
            )

    def retry_after_s(self, depth: int) -> int:
        """Seconds until the queue ahead of a new item has likely drained."""
        per_batch = self.runner.batch_seconds_ewma or 1.0
        batches = depth / max(self.batch_max_items, 1) + 1
        return max(1, min(120, math.ceil(per_batch * batches)))
