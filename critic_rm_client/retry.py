"""One API request with the retry policy and the call's deadline.

- **Retries.** 429, 502, 503 and transport errors (connect errors, read timeouts, dropped
  connections) are retried up to ``max_retries`` times with exponential backoff and equal
  jitter; a ``Retry-After`` header (seconds or an HTTP date) is honoured, capped by
  ``max_backoff_s``. Other 4xx are never retried (``CriticRMHTTPError``); 504 raises
  ``CriticRMDeadlineExceeded``; when retries run out, ``CriticRMUnavailable``.
- **Deadlines.** ``deadline_s`` bounds a whole call, retries included: each attempt sends the time
  left as ``X-Request-Timeout`` so the server drops work nobody waits for, and no retry is started
  that could not finish in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from critic_rm_client.config import ClientConfig
from critic_rm_client.errors import (
    CriticRMDeadlineExceeded,
    CriticRMError,
    CriticRMHTTPError,
    CriticRMUnavailable,
    describe,
)
from critic_rm_client.parse import decode, http_error
from critic_rm_client.steps import Call, Send, Sleep

DEADLINE_HEADER = "X-Request-Timeout"


class Budget:
    """The time left of a call's deadline (monotonic clock); unbounded when deadline_s is None."""

    def __init__(
        self, deadline_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.deadline_s = deadline_s
        self._clock = clock
        self._end = None if deadline_s is None else clock() + deadline_s

    def remaining(self) -> float | None:
        return None if self._end is None else self._end - self._clock()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


def budget(config: ClientConfig, deadline_s: float | None) -> Budget:
    """The budget of one call: its own ``deadline_s``, else the client's."""
    return Budget(deadline_s if deadline_s is not None else config.deadline_s)


# Transport errors that are the caller's own mistake: retrying cannot fix them.
_FATAL_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def request(config: ClientConfig, method: str, path: str, body: Any, budget: Budget) -> Call[Any]:
    """One API request with the retry policy; returns the decoded JSON body."""
    made = 0
    last: BaseException | None = None
    while True:
        remaining = budget.remaining()
        if remaining is not None and remaining <= 0:
            raise _deadline_error(method, path, budget, last)
        made += 1
        headers = None if remaining is None else {DEADLINE_HEADER: f"{max(remaining, 0.001):.3f}"}
        try:
            resp = yield Send(method, path, body, headers, config.timeout(remaining))
        except httpx.TransportError as exc:
            if isinstance(exc, _FATAL_TRANSPORT):
                raise CriticRMError(f"{method} {config.base_url}{path}: {describe(exc)}") from exc
            if budget.expired():
                raise _deadline_error(method, path, budget, exc) from exc
            last = exc
        else:
            if resp.is_success:
                return decode(resp, method, path)
            err = http_error(resp, method, path)
            if resp.status_code == 504:
                raise CriticRMDeadlineExceeded(
                    str(err), status=504, deadline_s=budget.deadline_s, last_error=err
                )
            if resp.status_code not in config.retry_statuses:
                raise err
            last = err
        if made > config.max_retries:
            raise CriticRMUnavailable(method, path, made, last) from last
        retry_after = last.retry_after if isinstance(last, CriticRMHTTPError) else None
        delay = config.backoff(made - 1, retry_after)
        left = budget.remaining()
        if left is not None and delay >= left:
            raise _deadline_error(method, path, budget, last)
        yield Sleep(delay)


def _deadline_error(
    method: str, path: str, budget: Budget, last: BaseException | None
) -> CriticRMDeadlineExceeded:
    tail = f"; last error: {describe(last)}" if last is not None else ""
    return CriticRMDeadlineExceeded(
        f"{method} {path}: deadline of {budget.deadline_s}s exhausted{tail}",
        deadline_s=budget.deadline_s,
        last_error=last,
    )
