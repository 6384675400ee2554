"""Domain errors the API turns into HTTP responses."""

from __future__ import annotations

import re


class InvalidRequest(Exception):
    """Input the service refuses; `field` names where (e.g. "items[3].prompt")."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


class NotReady(Exception):
    """No model is loaded yet (or loading failed)."""


class EngineFailure(Exception):
    """An engine batch failed; only the requests in that batch see it."""


class Overloaded(Exception):
    """The queue is full; the client should come back after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before its results were ready; its queued work is dropped."""


class ReloadFailed(Exception):
    """A new version could not be loaded; the previous one keeps serving."""


class ShuttingDown(Exception):
    """The service is stopping: the client should retry on another replica (503)."""


_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+~-]+/)*[\w.@+~-]+")


def public_message(text: str) -> str:
    """An error text fit for a public answer: absolute server paths become `<path>` (the
    full text goes to the log)."""
    return _ABS_PATH.sub("<path>", text)
