"""Schemathesis hooks for test_schemathesis.py, loaded by the schemathesis CLI of .venv-tools
(SCHEMATHESIS_HOOKS=<this file>), never imported by pytest.

`no_server_error`: the built-in `not_a_server_error`, except for the one 5xx the gateway gives
on purpose: a 504 deadline_exceeded for a request whose X-Request-Timeout header asked for a
deadline shorter than the fake engines need (the fuzzer sends values such as 1e-255 seconds).
The fake engines answer in milliseconds, so a 504 under a deadline of a second or more, or any
other 5xx, is a gateway bug."""

from __future__ import annotations

import json
import math
from typing import Any

import schemathesis

DEADLINE_HEADER = "x-request-timeout"
SHORT_DEADLINE_S = 1.0


def _requested_deadline(case: Any) -> float | None:
    for name, value in (case.headers or {}).items():
        if name.lower() == DEADLINE_HEADER:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            return seconds if math.isfinite(seconds) else None
    return None


def _error_code(response: Any) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> None:
    status = response.status_code
    if status < 500:
        return
    deadline = _requested_deadline(case)
    if (
        status == 504
        and _error_code(response) == "deadline_exceeded"
        and deadline is not None
        and 0 < deadline < SHORT_DEADLINE_S
    ):
        return  # the client asked for a deadline the work could not meet
    raise AssertionError(f"server error {status}: {response.content[:2000]!r}")
