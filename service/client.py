"""Python client for the Critic-RM HTTP API (``/score``, ``/critique``, ``/ready``, ``/info``).

Only depends on httpx, so rollout workers can import it without the service's own stack::

    from service.client import CriticRMClient

    with CriticRMClient("http://critic-rm:8000", api_key="...") as rm:
        result = rm.score([("What is 17 * 3?", "51")], num_critiques=4)
        print(result.model_version, result.rewards)

``CriticRMClient`` (sync, ``httpx.Client``) and ``AsyncCriticRMClient`` (``httpx.AsyncClient``)
share one surface and one behaviour:

- **Batching.** ``score`` takes any number of items, splits them into requests of at most
  ``max_batch_items`` and sends up to ``max_concurrency`` of them at once (sync: a thread pool;
  async: a semaphore), then reassembles the results in input order.
- **One model version per call.** Every split request is stamped by the server with the
  ``model_version`` that scored it. If a checkpoint reload lands between two split requests, the
  versions differ: the whole call is retried once, and if they still differ
  ``CriticRMVersionMismatch`` is raised. Rewards of two versions are never mixed silently.
- **Retries.** 429, 502 and 503 and transport errors (connect errors, read timeouts, dropped
  connections) are retried up to ``max_retries`` times with exponential backoff and jitter; a
  ``Retry-After`` header (seconds) is honoured, capped by ``max_backoff_s``. Other 4xx (400, 401,
  403, 413, 422) are never retried and raise ``CriticRMHTTPError`` at once; 504 raises
  ``CriticRMDeadlineExceeded``. When retries run out, ``CriticRMUnavailable`` is raised.
- **Deadlines.** ``deadline_s`` (per client or per call) bounds the whole call, retries included:
  each attempt sends the time left as ``X-Request-Timeout`` so the server drops work nobody waits
  for, and no retry is started that could not finish in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import math
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeAlias, TypeVar

import httpx

__all__ = [
    "AsyncCriticRMClient",
    "CriticRMClient",
    "CriticRMDeadlineExceeded",
    "CriticRMError",
    "CriticRMHTTPError",
    "CriticRMUnavailable",
    "CriticRMVersionMismatch",
    "Critique",
    "CritiqueResult",
    "ItemScore",
    "Message",
    "Prompt",
    "ReadyStatus",
    "ScoreItem",
    "ScoreItemLike",
    "ScoreResult",
    "Usage",
    "message_text",
]

DEADLINE_HEADER = "X-Request-Timeout"
USER_AGENT = "critic-rm-client/0.1"

Message: TypeAlias = Mapping[str, Any]
"""A chat message: ``{"role": ..., "content": ...}``; other keys are dropped when sent."""
Prompt: TypeAlias = str | Sequence[Message]


# --------------------------------------------------------------------------- errors


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
            f"{method} {path} failed after {attempts} attempts; last error: {_describe(last_error)}"
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CriticRMError):
        return str(exc)
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoreItem:
    """A (prompt, response) pair to score. ``prompt`` is text or a list of chat messages."""

    prompt: Prompt
    response: str


ScoreItemLike: TypeAlias = ScoreItem | Mapping[str, Any] | tuple[Prompt, str]
"""What ``score`` accepts per item: a ``ScoreItem``, a ``{"prompt", "response"}`` mapping, or a
``(prompt, response)`` pair."""


@dataclass(frozen=True)
class Usage:
    """Tokens the service processed for a call (summed over split requests)."""

    prompt_tokens: int = 0
    critique_tokens: int = 0


@dataclass(frozen=True)
class ItemScore:
    """The service's result for one item: the mean reward over the m critiques, the m rewards,
    their standard deviation, the critique texts when asked for, and whether it came from the
    service's result cache."""

    reward: float
    critique_rewards: list[float]
    reward_std: float
    critiques: list[str] | None
    cached: bool


@dataclass(frozen=True)
class ScoreResult:
    """The result of one ``score`` call, in input order, all from one ``model_version``."""

    model_version: str
    results: list[ItemScore]
    usage: Usage
    warnings: list[str]

    @property
    def rewards(self) -> list[float]:
        """The per-item rewards, in input order."""
        return [r.reward for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[ItemScore]:
        return iter(self.results)


@dataclass(frozen=True)
class Critique:
    """One sampled critique and the reward read after it."""

    text: str
    reward: float
    finish_reason: str


@dataclass(frozen=True)
class CritiqueResult:
    """The result of ``critique``: the sampled critiques and their mean reward."""

    model_version: str
    critiques: list[Critique]
    reward: float
    cached: bool
    usage: Usage
    warnings: list[str]


@dataclass(frozen=True)
class ReadyStatus:
    """``GET /ready``: ``ready`` is true once the engines are loaded and warmed up; otherwise
    ``status`` is the service state (``loading``, ``warming``, ``failed``) and ``error`` why."""

    ready: bool
    status: str
    model_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


# --------------------------------------------------------------------------- shared logic

T = TypeVar("T")

# Transport errors that are the caller's own mistake: retrying cannot fix them.
_FATAL_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
_ITEM_INDEX = re.compile(r"^items\[(\d+)\]")


class _Budget:
    """The time left of a call's deadline (monotonic clock); unbounded when deadline_s is None."""

    def __init__(self, deadline_s: float | None) -> None:
        self.deadline_s = deadline_s
        self._end = None if deadline_s is None else time.monotonic() + deadline_s

    def remaining(self) -> float | None:
        return None if self._end is None else self._end - time.monotonic()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


def _message(m: Message) -> dict[str, str]:
    # The service refuses unknown keys (tool_calls, name, ...) and non-text content, which chat
    # datasets carry routinely; keep role and the text of the content only.
    return {"role": str(m["role"]), "content": message_text(m.get("content"))}


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a multimodal part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _prompt_json(prompt: Prompt) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        return prompt
    return [_message(m) for m in prompt]


def _item_json(item: ScoreItemLike) -> dict[str, Any]:
    if isinstance(item, ScoreItem):
        prompt, response = item.prompt, item.response
    elif isinstance(item, Mapping):
        prompt, response = item["prompt"], item["response"]
    elif isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], str):
        # Lists too: pairs that went through JSON come back as lists.
        prompt, response = item
    else:
        raise TypeError(
            f"score items must be ScoreItem, {{'prompt', 'response'}} mappings or "
            f"(prompt, response) pairs, not {type(item).__name__}"
        )
    return {"prompt": _prompt_json(prompt), "response": response}


def _drop_none(**fields: Any) -> dict[str, Any]:
    # Unset fields are left out so the service applies the checkpoint's defaults.
    return {k: v for k, v in fields.items() if v is not None}


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _http_error(resp: httpx.Response, method: str, path: str) -> CriticRMHTTPError:
    code, message, field_ = "http_error", "", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        field_ = err.get("field") if isinstance(err.get("field"), str) else None
    else:
        # Not the service's JSON (a proxy or load balancer answered): keep a readable excerpt.
        message = resp.text[:300].strip()
    return CriticRMHTTPError(
        resp.status_code,
        code,
        message or resp.reason_phrase,
        field_,
        retry_after=_parse_retry_after(resp.headers.get("retry-after")),
        method=method,
        path=path,
    )


def _shift_item_index(err: CriticRMHTTPError, offset: int) -> CriticRMHTTPError:
    """Rewrite ``items[k]`` in a split request's error to the index in the caller's list."""
    if offset == 0 or err.field is None or not _ITEM_INDEX.match(err.field):
        return err

    def shift(text: str) -> str:
        return _ITEM_INDEX.sub(lambda m: f"items[{int(m.group(1)) + offset}]", text, count=1)

    new = CriticRMHTTPError(
        err.status,
        err.code,
        shift(err.message),
        shift(err.field),
        retry_after=err.retry_after,
        method=err.method,
        path=err.path,
    )
    new.__cause__ = err.__cause__
    return new


def _usage(data: Any) -> Usage:
    data = data or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens", 0)),
        critique_tokens=int(data.get("critique_tokens", 0)),
    )


def _item_score(data: Mapping[str, Any]) -> ItemScore:
    critiques = data.get("critiques")
    return ItemScore(
        reward=float(data["reward"]),
        critique_rewards=[float(x) for x in data.get("critique_rewards", [])],
        reward_std=float(data.get("reward_std", 0.0)),
        critiques=None if critiques is None else [str(c) for c in critiques],
        cached=bool(data.get("cached", False)),
    )


def _score_result(data: Any, expected: int) -> ScoreResult:
    try:
        results = [_item_score(r) for r in data["results"]]
        out = ScoreResult(
            model_version=str(data["model_version"]),
            results=results,
            usage=_usage(data.get("usage")),
            warnings=[str(w) for w in data.get("warnings", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CriticRMError(f"malformed /score response: {_describe(exc)}") from exc
    if len(out.results) != expected:
        raise CriticRMError(f"/score returned {len(out.results)} results for {expected} items")
    return out


def _critique_result(data: Any) -> CritiqueResult:
    try:
        return CritiqueResult(
            model_version=str(data["model_version"]),
            critiques=[
                Critique(str(c["text"]), float(c["reward"]), str(c.get("finish_reason", "")))
                for c in data["critiques"]
            ],
            reward=float(data["reward"]),
            cached=bool(data.get("cached", False)),
            usage=_usage(data.get("usage")),
            warnings=[str(w) for w in data.get("warnings", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CriticRMError(f"malformed /critique response: {_describe(exc)}") from exc


def _merge(parts: Sequence[ScoreResult]) -> ScoreResult:
    warnings: dict[str, None] = {}  # ordered set: every split request repeats model warnings
    for p in parts:
        warnings.update(dict.fromkeys(p.warnings))
    return ScoreResult(
        model_version=parts[0].model_version,
        results=[r for p in parts for r in p.results],
        usage=Usage(
            prompt_tokens=sum(p.usage.prompt_tokens for p in parts),
            critique_tokens=sum(p.usage.critique_tokens for p in parts),
        ),
        warnings=list(warnings),
    )


def _ready_status(resp: httpx.Response) -> ReadyStatus:
    # 503 is a not-ready status, not an error; any other failure is.
    if resp.status_code not in (200, 503):
        raise _http_error(resp, "GET", "/ready")
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    status = str(body.get("status", "ready" if resp.status_code == 200 else "unknown"))
    return ReadyStatus(
        ready=resp.status_code == 200 and status == "ready",
        status=status,
        model_version=body.get("model_version"),
        warnings=[str(w) for w in body.get("warnings") or []],
        error=body.get("error"),
    )


def _info(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CriticRMError("malformed /info response")
    return data


def _critique_body(prompt: Prompt, response: str, **options: Any) -> dict[str, Any]:
    return {"prompt": _prompt_json(prompt), "response": response, **_drop_none(**options)}


def _decode(resp: httpx.Response, method: str, path: str) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise CriticRMError(f"{method} {path}: response is not JSON: {resp.text[:200]!r}") from exc


def _check_versions(parts: Sequence[ScoreResult]) -> bool:
    return len({p.model_version for p in parts}) <= 1


def _raise_first(errors: Iterable[BaseException | None]) -> None:
    """Raise the first error of the split requests, in input order."""
    for error in errors:
        if error is not None:
            raise error


class _Cancelled(Exception):
    """A sibling split request failed; this one stops instead of retrying."""


class _Base:
    """Configuration, timeouts and backoff shared by the sync and async clients (the retry loop's
    bookkeeping is ``_Attempts``; the clients themselves only do the I/O)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        max_batch_items: int,
        max_concurrency: int,
        max_retries: int,
        backoff_base_s: float,
        max_backoff_s: float,
        connect_timeout_s: float,
        read_timeout_s: float,
        deadline_s: float | None,
        retry_statuses: Collection[int],
        headers: Mapping[str, str] | None,
    ) -> None:
        if max_batch_items < 1:
            raise ValueError("max_batch_items must be >= 1")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        bad = [s for s in retry_statuses if 400 <= s < 500 and s != 429]
        if bad:
            # A 4xx other than 429 means the request itself is wrong; resending it cannot help.
            raise ValueError(f"4xx statuses other than 429 are never retried: {bad}")
        self.base_url = base_url.rstrip("/")
        self.max_batch_items = max_batch_items
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.deadline_s = deadline_s
        self.retry_statuses = frozenset(retry_statuses)
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _http_options(self) -> dict[str, Any]:
        """The ``httpx.Client`` / ``httpx.AsyncClient`` arguments, less the transport."""
        return {
            "base_url": self.base_url,
            "headers": self._headers,
            "timeout": self._timeout(),
            # Room for every split request of a few concurrent calls without pool waits.
            "limits": httpx.Limits(max_connections=max(100, 4 * self.max_concurrency)),
        }

    def _budget(self, deadline_s: float | None) -> _Budget:
        """The budget of one call: its own ``deadline_s``, else the client's."""
        return _Budget(deadline_s if deadline_s is not None else self.deadline_s)

    def _timeout(self, remaining: float | None = None) -> httpx.Timeout:
        read = self.read_timeout_s
        connect = self.connect_timeout_s
        if remaining is not None:
            # The server answers 504 at the deadline; the grace lets that answer arrive rather
            # than cutting the connection a moment before it.
            read = min(read, max(remaining, 0.001) + 1.0)
            connect = min(connect, max(remaining, 0.001))
        return httpx.Timeout(read, connect=connect)

    def _attempt_headers(self, remaining: float | None) -> dict[str, str]:
        if remaining is None:
            return {}
        return {DEADLINE_HEADER: f"{max(remaining, 0.001):.3f}"}

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Small upward jitter so a fleet of workers told the same Retry-After does not
            # come back in lockstep.
            return min(self.max_backoff_s, retry_after * (1.0 + 0.1 * random.random()))
        ceiling = min(self.max_backoff_s, self.backoff_base_s * (2.0**attempt))
        return ceiling / 2.0 + random.uniform(0.0, ceiling / 2.0)

    def _chunks(self, items: Sequence[ScoreItemLike]) -> list[tuple[int, list[dict[str, Any]]]]:
        if not items:
            raise ValueError("score() needs at least one item")
        body = [_item_json(i) for i in items]
        step = self.max_batch_items
        return [(start, body[start : start + step]) for start in range(0, len(body), step)]

    @staticmethod
    def _score_options(
        *,
        num_critiques: int | None,
        temperature: float | None,
        top_p: float | None,
        max_critique_tokens: int | None,
        return_critiques: bool,
        truncate_prompt: bool | None,
        use_cache: bool | None,
    ) -> dict[str, Any]:
        return _drop_none(
            num_critiques=num_critiques,
            temperature=temperature,
            top_p=top_p,
            max_critique_tokens=max_critique_tokens,
            return_critiques=return_critiques or None,
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
        )


class _Attempts:
    """Retry bookkeeping of one request: the deadline, which failures are retried, and the waits
    between attempts. The clients only send the requests and sleep."""

    def __init__(self, client: _Base, method: str, path: str, budget: _Budget) -> None:
        self.client, self.method, self.path, self.budget = client, method, path, budget
        self.made = 0
        self.last: BaseException | None = None

    def begin(self) -> dict[str, Any]:
        """Count a new attempt and return its ``headers`` (the time left, for the server) and
        ``timeout``; raises ``CriticRMDeadlineExceeded`` if the deadline has passed."""
        remaining = self.budget.remaining()
        if remaining is not None and remaining <= 0:
            raise self._deadline_error(self.last)
        self.made += 1
        return {
            "headers": self.client._attempt_headers(remaining),
            "timeout": self.client._timeout(remaining),
        }

    def transport_error(self, exc: httpx.TransportError) -> None:
        """Record a transport error; raise if it cannot be retried or the deadline passed."""
        if isinstance(exc, _FATAL_TRANSPORT):
            where = f"{self.method} {self.client.base_url}{self.path}"
            raise CriticRMError(f"{where}: {_describe(exc)}") from exc
        if self.budget.expired():
            raise self._deadline_error(exc) from exc
        self.last = exc

    def succeeded(self, resp: httpx.Response) -> bool:
        """True on success; records an error status that may be retried, raises any other."""
        if resp.is_success:
            return True
        err = _http_error(resp, self.method, self.path)
        if resp.status_code == 504:
            raise CriticRMDeadlineExceeded(
                str(err), status=504, deadline_s=self.budget.deadline_s, last_error=err
            )
        if resp.status_code not in self.client.retry_statuses:
            raise err
        self.last = err
        return False

    def wait(self) -> float:
        """The wait before the next attempt; raises ``CriticRMUnavailable`` when the retries are
        spent, or ``CriticRMDeadlineExceeded`` when the retry could not finish in time."""
        last = self.last
        assert last is not None
        if self.made > self.client.max_retries:
            raise CriticRMUnavailable(self.method, self.path, self.made, last) from last
        retry_after = last.retry_after if isinstance(last, CriticRMHTTPError) else None
        delay = self.client._backoff(self.made - 1, retry_after)
        left = self.budget.remaining()
        if left is not None and delay >= left:
            raise self._deadline_error(last)
        return delay

    def _deadline_error(self, last: BaseException | None) -> CriticRMDeadlineExceeded:
        deadline_s = self.budget.deadline_s
        tail = f"; last error: {_describe(last)}" if last is not None else ""
        return CriticRMDeadlineExceeded(
            f"{self.method} {self.path}: deadline of {deadline_s}s exhausted{tail}",
            deadline_s=deadline_s,
            last_error=last,
        )


class _ReadyPoll:
    """Bookkeeping of ``wait_ready``: why the service is not ready yet, and when to give up."""

    def __init__(self, timeout_s: float, poll_s: float) -> None:
        self.end = time.monotonic() + timeout_s
        self.poll_s = poll_s
        self.polls = 0
        self.last: BaseException = CriticRMError("never polled")

    def is_ready(self, status: ReadyStatus) -> bool:
        """True once ready; raises if the service reports ``failed``."""
        if status.ready:
            return True
        if status.status == "failed":
            raise CriticRMError(f"critic-rm failed to start: {status.error}")
        self.last = CriticRMError(f"not ready: {status.status}")
        return False

    def wait(self) -> float:
        """The pause after a poll that did not find the service ready; raises
        ``CriticRMUnavailable`` if the next poll would come after the timeout."""
        self.polls += 1
        if time.monotonic() + self.poll_s > self.end:
            raise CriticRMUnavailable("GET", "/ready", self.polls, self.last)
        return self.poll_s


# --------------------------------------------------------------------------- sync client


class CriticRMClient(_Base):
    """Synchronous Critic-RM client over ``httpx.Client``; thread-safe, one per process is enough.

    Args:
        base_url: the service, e.g. ``http://critic-rm:8000``.
        api_key: sent as ``Authorization: Bearer <api_key>``.
        max_batch_items: items per ``/score`` request; larger calls are split (keep it at or
            under the service's ``max_items_per_request``, see ``info()["limits"]``).
        max_concurrency: split requests of one call in flight at once (a thread pool).
        max_retries: retries after the first attempt on 429/502/503 and transport errors.
        backoff_base_s, max_backoff_s: exponential backoff base and cap; ``Retry-After`` is
            honoured up to the cap.
        connect_timeout_s, read_timeout_s: per-attempt httpx timeouts.
        deadline_s: default budget for a whole call, retries included (sent as
            ``X-Request-Timeout``); per-call ``deadline_s`` overrides it.
        retry_statuses: statuses to retry; 4xx other than 429 are refused.
        headers: extra headers for every request.
        transport: an httpx transport (tests, proxies, custom TLS).
        sleep: how to wait between retries (tests inject a recorder).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_batch_items: int = 256,
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        max_backoff_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 180.0,
        deadline_s: float | None = None,
        retry_statuses: Collection[int] = (429, 502, 503),
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            max_batch_items=max_batch_items,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            max_backoff_s=max_backoff_s,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            deadline_s=deadline_s,
            retry_statuses=retry_statuses,
            headers=headers,
        )
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **self._http_options())

    # -- lifecycle

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> CriticRMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API

    def score(
        self,
        items: Sequence[ScoreItemLike],
        *,
        num_critiques: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_critique_tokens: int | None = None,
        return_critiques: bool = False,
        truncate_prompt: bool | None = None,
        use_cache: bool | None = None,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        """Score (prompt, response) items; unset options take the checkpoint's defaults.

        Splits into requests of ``max_batch_items``, reassembles in order, and guarantees one
        ``model_version`` for all results (retries the whole call once on a mid-call reload,
        then raises ``CriticRMVersionMismatch``).
        """
        chunks = self._chunks(items)
        options = self._score_options(
            num_critiques=num_critiques,
            temperature=temperature,
            top_p=top_p,
            max_critique_tokens=max_critique_tokens,
            return_critiques=return_critiques,
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
        )
        budget = self._budget(deadline_s)
        parts: list[ScoreResult] = []
        for _ in range(2):
            parts = self._score_chunks(chunks, options, budget)
            if _check_versions(parts):
                return _merge(parts)
        raise CriticRMVersionMismatch([p.model_version for p in parts])

    def critique(
        self,
        prompt: Prompt,
        response: str,
        n: int | None = None,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_critique_tokens: int | None = None,
        truncate_prompt: bool | None = None,
        use_cache: bool | None = None,
        deadline_s: float | None = None,
    ) -> CritiqueResult:
        """Sample ``n`` critiques of one response and their rewards (why the reward is what it is)."""
        body = _critique_body(
            prompt,
            response,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_critique_tokens=max_critique_tokens,
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
        )
        budget = self._budget(deadline_s)
        return _critique_result(self._request("POST", "/critique", body, budget))

    def ready(self) -> ReadyStatus:
        """``GET /ready`` once, without retries (it is a probe); 503 is a not-ready status, not
        an error. Raises ``CriticRMUnavailable`` if the service cannot be reached."""
        try:
            resp = self._http.get("/ready")
        except httpx.TransportError as exc:
            raise CriticRMUnavailable("GET", "/ready", 1, exc) from exc
        return _ready_status(resp)

    def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> ReadyStatus:
        """Poll ``/ready`` until the service is ready; raises ``CriticRMUnavailable`` after
        ``timeout_s`` or at once if the service reports ``failed``."""
        poll = _ReadyPoll(timeout_s, poll_s)
        while True:
            try:
                status = self.ready()
            except CriticRMUnavailable as exc:
                poll.last = exc.last_error
            else:
                if poll.is_ready(status):
                    return status
            self._sleep(poll.wait())

    def info(self) -> dict[str, Any]:
        """``GET /info``: model version, defaults, limits, engines (retried like ``score``)."""
        return _info(self._request("GET", "/info", None, self._budget(None)))

    # -- internals

    def _score_chunks(
        self,
        chunks: list[tuple[int, list[dict[str, Any]]]],
        options: dict[str, Any],
        budget: _Budget,
    ) -> list[ScoreResult]:
        stop = threading.Event()

        def one(chunk: tuple[int, list[dict[str, Any]]]) -> ScoreResult:
            offset, items = chunk
            try:
                data = self._request("POST", "/score", {"items": items, **options}, budget, stop)
            except CriticRMHTTPError as exc:
                raise _shift_item_index(exc, offset) from exc
            return _score_result(data, len(items))

        workers = min(self.max_concurrency, len(chunks))
        if workers == 1:
            return [one(c) for c in chunks]
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="critic-rm")
        futures = [pool.submit(one, c) for c in chunks]
        try:
            done, _ = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            _raise_first(f.exception() for f in futures if f in done)
            return [f.result() for f in futures]
        finally:
            # On failure, do not wait for siblings still backing off: they see `stop` and quit.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        budget: _Budget,
        stop: threading.Event | None = None,
    ) -> Any:
        attempts = _Attempts(self, method, path, budget)
        while True:
            per_attempt = attempts.begin()
            try:
                resp = self._http.request(method, path, json=body, **per_attempt)
            except httpx.TransportError as exc:
                attempts.transport_error(exc)
            else:
                if attempts.succeeded(resp):
                    return _decode(resp, method, path)
            delay = attempts.wait()
            if stop is not None and stop.is_set():
                raise _Cancelled
            self._sleep(delay)


# --------------------------------------------------------------------------- async client


class AsyncCriticRMClient(_Base):
    """Asyncio Critic-RM client over ``httpx.AsyncClient``; same arguments and behaviour as
    ``CriticRMClient`` (split requests run as tasks under an ``asyncio.Semaphore`` of
    ``max_concurrency``). Use it from one event loop; ``sleep`` is an async callable."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_batch_items: int = 256,
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        max_backoff_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 180.0,
        deadline_s: float | None = None,
        retry_statuses: Collection[int] = (429, 502, 503),
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            max_batch_items=max_batch_items,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            max_backoff_s=max_backoff_s,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            deadline_s=deadline_s,
            retry_statuses=retry_statuses,
            headers=headers,
        )
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCriticRMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def score(
        self,
        items: Sequence[ScoreItemLike],
        *,
        num_critiques: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_critique_tokens: int | None = None,
        return_critiques: bool = False,
        truncate_prompt: bool | None = None,
        use_cache: bool | None = None,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        """Score (prompt, response) items; see ``CriticRMClient.score``."""
        chunks = self._chunks(items)
        options = self._score_options(
            num_critiques=num_critiques,
            temperature=temperature,
            top_p=top_p,
            max_critique_tokens=max_critique_tokens,
            return_critiques=return_critiques,
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
        )
        budget = self._budget(deadline_s)
        parts: list[ScoreResult] = []
        for _ in range(2):
            parts = await self._score_chunks(chunks, options, budget)
            if _check_versions(parts):
                return _merge(parts)
        raise CriticRMVersionMismatch([p.model_version for p in parts])

    async def critique(
        self,
        prompt: Prompt,
        response: str,
        n: int | None = None,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_critique_tokens: int | None = None,
        truncate_prompt: bool | None = None,
        use_cache: bool | None = None,
        deadline_s: float | None = None,
    ) -> CritiqueResult:
        """Sample ``n`` critiques of one response and their rewards."""
        body = _critique_body(
            prompt,
            response,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_critique_tokens=max_critique_tokens,
            truncate_prompt=truncate_prompt,
            use_cache=use_cache,
        )
        budget = self._budget(deadline_s)
        return _critique_result(await self._request("POST", "/critique", body, budget))

    async def ready(self) -> ReadyStatus:
        """``GET /ready`` once, without retries; see ``CriticRMClient.ready``."""
        try:
            resp = await self._http.get("/ready")
        except httpx.TransportError as exc:
            raise CriticRMUnavailable("GET", "/ready", 1, exc) from exc
        return _ready_status(resp)

    async def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 2.0) -> ReadyStatus:
        """Poll ``/ready`` until ready; see ``CriticRMClient.wait_ready``."""
        poll = _ReadyPoll(timeout_s, poll_s)
        while True:
            try:
                status = await self.ready()
            except CriticRMUnavailable as exc:
                poll.last = exc.last_error
            else:
                if poll.is_ready(status):
                    return status
            await self._sleep(poll.wait())

    async def info(self) -> dict[str, Any]:
        """``GET /info`` (retried like ``score``)."""
        return _info(await self._request("GET", "/info", None, self._budget(None)))

    async def _score_chunks(
        self,
        chunks: list[tuple[int, list[dict[str, Any]]]],
        options: dict[str, Any],
        budget: _Budget,
    ) -> list[ScoreResult]:
        # Per call, not per client: the semaphore must belong to the running loop, and a
        # client-wide cap would throttle many small concurrent calls that the server batches.
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(chunk: tuple[int, list[dict[str, Any]]]) -> ScoreResult:
            offset, items = chunk
            async with gate:
                try:
                    data = await self._request(
                        "POST", "/score", {"items": items, **options}, budget
                    )
                except CriticRMHTTPError as exc:
                    raise _shift_item_index(exc, offset) from exc
            return _score_result(data, len(items))

        if len(chunks) == 1:
            return [await one(chunks[0])]
        tasks = [asyncio.ensure_future(one(c)) for c in chunks]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            _raise_first(t.exception() for t in tasks if t.done())
            return [t.result() for t in tasks]
        finally:
            pending = [t for t in tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, budget: _Budget
    ) -> Any:
        attempts = _Attempts(self, method, path, budget)
        while True:
            per_attempt = attempts.begin()
            try:
                resp = await self._http.request(method, path, json=body, **per_attempt)
            except httpx.TransportError as exc:
                attempts.transport_error(exc)
            else:
                if attempts.succeeded(resp):
                    return _decode(resp, method, path)
            await self._sleep(attempts.wait())
