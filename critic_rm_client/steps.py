"""The steps a call asks its loop to perform, free of I/O.

Every API call is a *call*: a generator that yields what it needs done and receives the answer,

- ``Send(...)``: send one HTTP request; answered with the ``httpx.Response``, or the
  ``httpx.TransportError`` is thrown in;
- ``Sleep(seconds)``: wait before a retry;
- ``Gather(calls, limit)``: run sub-calls concurrently (at most ``limit`` at once); answered with
  their results in order, or the first failure (in input order) is thrown in,

and returns the parsed result (``critic_rm_client.calls``). ``RewardClient`` (threads) and
``AsyncRewardClient`` (tasks) are only the loops that perform these actions, so both behave the
same by construction.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send one HTTP request; ``timeout`` None keeps the client's default."""

    method: str
    path: str
    json: Any = None
    headers: Mapping[str, str] | None = None
    timeout: httpx.Timeout | None = None

    def kwargs(self) -> dict[str, Any]:
        """The ``httpx.Client.request`` keyword arguments."""
        out: dict[str, Any] = {"json": self.json, "headers": self.headers}
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True)
class Sleep:
    """Wait before the next attempt."""

    seconds: float


@dataclass(frozen=True)
class Gather:
    """Run sub-calls concurrently, at most ``limit`` at once."""

    calls: list[Call[Any]]
    limit: int


Action: TypeAlias = Send | Sleep | Gather
Call: TypeAlias = Generator[Action, Any, T]


def raise_first(errors: Iterable[BaseException | None]) -> None:
    """Raise the first error of a ``Gather``'s sub-calls, in input order."""
    for error in errors:
        if error is not None:
            raise error


class Cancelled(Exception):
    """A sibling sub-call failed; this one stops instead of retrying."""
