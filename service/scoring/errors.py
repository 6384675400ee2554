"""Errors of a scoring request that the API turns into HTTP responses (the model's lifecycle
errors are in service.model.errors; an external policy's in service.engines.chat_endpoint)."""

from __future__ import annotations


class InvalidRequest(Exception):
    """Input the service refuses; `field` names where (e.g. "items[3].prompt")."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


class EngineFailure(Exception):
    """An engine batch failed; only the requests in that batch see it."""


class Overloaded(Exception):
    """The queue is full; the client should come back after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before its results were ready; its queued work is dropped."""
