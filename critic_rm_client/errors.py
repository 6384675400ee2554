"""The errors the Critic-RM client raises; every one is a ``CriticRMError``."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CriticRMDeadlineExceeded",
    "CriticRMError",
    "CriticRMHTTPError",
    "CriticRMUnavailable",
    "CriticRMVersionMismatch",
    "describe",
]


class CriticRMError(Exception):
    """Base class of every error this client raises."""


class CriticRMHTTPError(CriticRMError):
    """The service answered with an error status that is not retried (or no longer retried).

    ``status`` is the HTTP status; ``code``, ``message`` and ``field`` come from the service's
    JSON error body (``field`` names the offending request field, e.g. ``items[3].prompt``, and is
    rewritten to the index in the caller's full item list when ``score`` split the call).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        retry_after: float | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.method = method
        self.path = path
        where = f" {method} {path}" if method else ""
        detail = f" (field: {field})" if field else ""
        super().__init__(f"HTTP {status} {code}{where}: {message}{detail}")


class CriticRMUnavailable(CriticRMError):
    """Retries were exhausted on 429/502/503 or transport errors.

    ``last_error`` is the last failure: a ``CriticRMHTTPError`` or an ``httpx.TransportError``;
    ``status`` is its HTTP status, or ``None`` for a transport error.
    """

    def __init__(self, method: str, path: str, attempts: int, last_error: BaseException) -> None:
        self.method = method
        self.path = path
        self.attempts = attempts
        self.last_error = last_error
        self.status: int | None = (
            last_error.status if isinstance(last_error, CriticRMHTTPError) else None
        )
        super().__init__(
            f"{method} {path} failed after {attempts} attempts; last error: {describe(last_error)}"
        )


class CriticRMDeadlineExceeded(CriticRMError):
    """The call's deadline passed: the service answered 504, or the client's ``deadline_s``
    budget ran out before an answer (``status`` is then ``None``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        deadline_s: float | None = None,
        last_error: BaseException | None = None,
    ) -> None:
        self.status = status
        self.deadline_s = deadline_s
        self.last_error = last_error
        super().__init__(message)


class CriticRMVersionMismatch(CriticRMError):
    """Split requests of one ``score`` call were scored by different model versions, twice in a
    row (a checkpoint reload happened mid-call and again during the retry)."""

    def __init__(self, versions: Sequence[str]) -> None:
        self.versions = list(versions)
        super().__init__(
            "the items of one score() call were scored by different model versions "
            f"{sorted(set(self.versions))} (a reload happened between its split requests), "
            "also on retry; refusing to mix rewards of different versions"
        )


def describe(exc: BaseException) -> str:
    """A one-line description of an error, with its type when it is not ours."""
    if isinstance(exc, CriticRMError):
        return str(exc)
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"
