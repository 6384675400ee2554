"""The client's logic, free of I/O: configuration, request building, chunking, the retry policy and
response parsing, written once for the sync and the async transport.

Every API call is a *call*: a generator that yields what it needs done and receives the answer,

- ``Send(...)``: send one HTTP request; answered with the ``httpx.Response``, or the
  ``httpx.TransportError`` is thrown in;
- ``Sleep(seconds)``: wait before a retry;
- ``Gather(calls, limit)``: run sub-calls concurrently (at most ``limit`` at once); answered with
  their results in order, or the first failure (in input order) is thrown in,

and returns the parsed result. ``RewardClient`` (threads) and ``AsyncRewardClient`` (tasks) are
only the loops that perform these actions, so both behave the same by construction:

- **Batching.** ``score`` splits the items into requests of at most ``max_batch_items`` and sends
  up to ``max_concurrency`` of them at once, then reassembles the results in input order.
- **One model version per call.** If a checkpoint reload lands between two split requests, the
  versions differ: the whole call is retried once, then ``CriticRMVersionMismatch`` is raised.
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

import dataclasses
import difflib
import email.utils
import math
import random
import re
import time
from collections.abc import Callable, Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeAlias, TypedDict, TypeVar

import httpx

from critic_rm_client.errors import (
    CriticRMDeadlineExceeded,
    CriticRMError,
    CriticRMHTTPError,
    CriticRMUnavailable,
    CriticRMVersionMismatch,
    describe,
)
from critic_rm_client.results import (
    Critique,
    CritiqueResult,
    ItemScore,
    Message,
    Prompt,
    ReadyStatus,
    RewardsResult,
    ScoreItem,
    ScoreItemLike,
    ScoreResult,
    Usage,
)

DEADLINE_HEADER = "X-Request-Timeout"
USER_AGENT = "critic-rm-client/0.1"

T = TypeVar("T")

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ClientConfig:
    """Where the service is and how to talk to it; ``RewardClient(url, **fields)`` builds one.

    ``max_batch_items``: items per ``/score`` request (keep it at or under the service's
    ``max_items_per_request``, see ``info()["limits"]``); ``max_concurrency``: split requests of
    one call in flight at once; ``max_retries``: retries after the first attempt;
    ``backoff_base_s``/``max_backoff_s``: exponential backoff base and cap (also the cap on
    ``Retry-After``); ``connect_timeout_s``/``read_timeout_s``: per attempt; ``deadline_s``: the
    default budget of a whole call (a call's own ``deadline_s`` overrides it);
    ``retry_statuses``: statuses retried (4xx other than 429 are refused); ``headers``: sent
    with every request.
    """

    base_url: str
    api_key: str | None = None
    max_batch_items: int = 256
    max_concurrency: int = 8
    max_retries: int = 5
    backoff_base_s: float = 0.5
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 180.0
    deadline_s: float | None = None
    retry_statuses: Collection[int] = (429, 502, 503)
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.max_batch_items < 1:
            raise ValueError("max_batch_items must be >= 1")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        bad = sorted(s for s in self.retry_statuses if 400 <= s < 500 and s != 429)
        if bad:
            # A 4xx other than 429 means the request itself is wrong; resending it cannot help.
            raise ValueError(f"4xx statuses other than 429 are never retried: {bad}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))
        object.__setattr__(self, "headers", dict(self.headers or {}))

    @classmethod
    def build(cls, base_url: str | ClientConfig, options: Mapping[str, Any]) -> ClientConfig:
        """A config from a URL (or a config) and field overrides; unknown names raise TypeError."""
        check_names(options, client_option_names(), "client option")
        if isinstance(base_url, ClientConfig):
            return dataclasses.replace(base_url, **options)
        return cls(base_url, **options)

    def request_headers(self) -> dict[str, str]:
        """The headers of every request: user agent, bearer token, the caller's extras."""
        out = {"User-Agent": USER_AGENT, **(self.headers or {})}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def http_options(self) -> dict[str, Any]:
        """The ``httpx.Client`` / ``httpx.AsyncClient`` arguments, less the transport."""
        return {
            "base_url": self.base_url,
            "headers": self.request_headers(),
            "timeout": self.timeout(),
            # Room for every split request of a few concurrent calls without pool waits.
            "limits": httpx.Limits(max_connections=max(100, 4 * self.max_concurrency)),
        }

    def timeout(self, remaining: float | None = None) -> httpx.Timeout:
        """The httpx timeout of one attempt with ``remaining`` seconds left of the call."""
        read, connect = self.read_timeout_s, self.connect_timeout_s
        if remaining is not None:
            # The server answers 504 at the deadline; the grace lets that answer arrive rather
            # than cutting the connection a moment before it.
            read = min(read, max(remaining, 0.001) + 1.0)
            connect = min(connect, max(remaining, 0.001))
        return httpx.Timeout(read, connect=connect)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """The wait after failed attempt number ``attempt`` (0-based)."""
        if retry_after is not None:
            # Small upward jitter so a fleet of workers told the same Retry-After does not
            # come back in lockstep.
            return min(self.max_backoff_s, retry_after * (1.0 + 0.1 * random.random()))
        ceiling = min(self.max_backoff_s, self.backoff_base_s * (2.0**attempt))
        return ceiling / 2.0 + random.uniform(0.0, ceiling / 2.0)


def client_option_names() -> frozenset[str]:
    """The ``ClientConfig`` fields a caller may set besides the URL."""
    return frozenset(f.name for f in dataclasses.fields(ClientConfig)) - {"base_url"}


class SamplingOptions(TypedDict, total=False):
    """Sampling options shared by ``/score`` and ``/critique``; unset (or None) ones take the
    served checkpoint's defaults."""

    temperature: float | None
    top_p: float | None
    max_critique_tokens: int | None
    truncate_prompt: bool | None
    use_cache: bool | None


class ScoreOptions(SamplingOptions, total=False):
    """The options of ``score``: the sampling options, m (``num_critiques``) and whether to
    return the critique texts."""

    num_critiques: int | None
    return_critiques: bool


def check_names(given: Iterable[str], known: Collection[str], what: str) -> None:
    """Raise TypeError naming the first name of ``given`` not in ``known`` (a misspelt option
    must fail loudly, not fall back to a default), with the closest known name."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown {what} {name!r}{hint} (known: {', '.join(sorted(known))})")


SAMPLING_OPTION_NAMES: frozenset[str] = SamplingOptions.__optional_keys__
SCORE_OPTION_NAMES: frozenset[str] = ScoreOptions.__optional_keys__


def option_fields(options: Mapping[str, Any], known: Collection[str]) -> dict[str, Any]:
    """The request fields of ``options`` (names checked against ``known``); unset ones are
    left out so the service applies the checkpoint's defaults."""
    check_names(options, known, "option")
    out = {k: v for k, v in options.items() if v is not None}
    if not out.get("return_critiques", True):
        del out["return_critiques"]  # the service's default; keeps the request minimal
    return out


# --------------------------------------------------------------------------- request building

_ITEM_INDEX = re.compile(r"^(items|query)\[(\d+)\]")


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


def _message(m: Message) -> dict[str, str]:
    # The service refuses unknown keys (tool_calls, name, ...) and non-text content, which chat
    # datasets carry routinely; keep role and the text of the content only.
    return {"role": str(m["role"]), "content": message_text(m.get("content"))}


def prompt_json(prompt: Prompt) -> str | list[dict[str, str]]:
    """A prompt as the service takes it: text, or chat messages reduced to role and text."""
    if isinstance(prompt, str):
        return prompt
    return [_message(m) for m in prompt]


def item_json(item: ScoreItemLike) -> dict[str, Any]:
    """One ``/score`` item from a ``ScoreItem``, a mapping or a ``(prompt, response)`` pair."""
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
    return {"prompt": prompt_json(prompt), "response": response}


def chunks(items: Sequence[T], size: int) -> list[tuple[int, list[T]]]:
    """``items`` in runs of at most ``size``, each with the offset of its first item."""
    return [(start, list(items[start : start + size])) for start in range(0, len(items), size)]


# --------------------------------------------------------------------------- actions


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


# --------------------------------------------------------------------------- retries


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


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); None when absent or unreadable."""
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


# --------------------------------------------------------------------------- calls


def score(
    config: ClientConfig,
    items: Sequence[ScoreItemLike],
    options: Mapping[str, Any],
    deadline_s: float | None = None,
) -> Call[ScoreResult]:
    """``POST /score`` over any number of items, all scored by one model version."""
    if not items:
        raise ValueError("score() needs at least one item")
    fields = option_fields(options, SCORE_OPTION_NAMES)
    runs = chunks([item_json(i) for i in items], config.max_batch_items)
    call_budget = budget(config, deadline_s)
    parts: list[ScoreResult] = []
    for _ in range(2):
        parts = yield Gather(
            [_score_run(config, offset, run, fields, call_budget) for offset, run in runs],
            config.max_concurrency,
        )
        if len({p.model_version for p in parts}) <= 1:
            return merge(parts)
    raise CriticRMVersionMismatch([p.model_version for p in parts])


def _score_run(
    config: ClientConfig,
    offset: int,
    items: list[dict[str, Any]],
    fields: dict[str, Any],
    call_budget: Budget,
) -> Call[ScoreResult]:
    try:
        data = yield from request(config, "POST", "/score", {"items": items, **fields}, call_budget)
    except CriticRMHTTPError as exc:
        raise shift_item_index(exc, offset) from exc
    return score_result(data, len(items))


def critique(
    config: ClientConfig,
    prompt: Prompt,
    response: str,
    n: int | None,
    options: Mapping[str, Any],
    deadline_s: float | None = None,
) -> Call[CritiqueResult]:
    """``POST /critique``: ``n`` sampled critiques of one response and their rewards."""
    body: dict[str, Any] = {"prompt": prompt_json(prompt), "response": response}
    if n is not None:
        body["n"] = n
    body.update(option_fields(options, SAMPLING_OPTION_NAMES))
    data = yield from request(config, "POST", "/critique", body, budget(config, deadline_s))
    return critique_result(data)


def info(config: ClientConfig, deadline_s: float | None = None) -> Call[dict[str, Any]]:
    """``GET /info``: model version, defaults, limits, reward statistics (retried)."""
    data = yield from request(config, "GET", "/info", None, budget(config, deadline_s))
    if not isinstance(data, dict):
        raise CriticRMError("malformed /info response")
    return data


def ready() -> Call[ReadyStatus]:
    """``GET /ready`` once, without retries (it is a probe)."""
    try:
        resp = yield Send("GET", "/ready")
    except httpx.TransportError as exc:
        raise CriticRMUnavailable("GET", "/ready", 1, exc) from exc
    return ready_status(resp)


def wait_ready(timeout_s: float, poll_s: float) -> Call[ReadyStatus]:
    """Poll ``/ready`` until ready; ``CriticRMUnavailable`` after ``timeout_s``, a
    ``CriticRMError`` at once if the service reports ``failed``."""
    end = time.monotonic() + timeout_s
    polls = 0
    last: BaseException = CriticRMError("never polled")
    while True:
        try:
            status = yield from ready()
        except CriticRMUnavailable as exc:
            last = exc.last_error
        else:
            if status.ready:
                return status
            if status.status == "failed":
                raise CriticRMError(f"critic-rm failed to start: {status.error}")
            last = CriticRMError(f"not ready: {status.status}")
        polls += 1
        if time.monotonic() + poll_s > end:
            raise CriticRMUnavailable("GET", "/ready", polls, last)
        yield Sleep(poll_s)


def get_reward(
    config: ClientConfig,
    queries: Sequence[str],
    prompts: Sequence[str] | None,
    deadline_s: float | None = None,
) -> Call[RewardsResult]:
    """``POST /get_reward`` (OpenRLHF's protocol) over rendered prompt+response texts."""
    if not queries:
        raise ValueError("get_reward() needs at least one query")
    if prompts is not None and len(prompts) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")
    call_budget = budget(config, deadline_s)
    runs = chunks(range(len(queries)), config.max_batch_items)
    parts = yield Gather(
        [
            _get_reward_run(
                config,
                offset,
                {
                    "query": [queries[i] for i in run],
                    **({"prompts": [prompts[i] for i in run]} if prompts is not None else {}),
                },
                len(run),
                call_budget,
            )
            for offset, run in runs
        ],
        config.max_concurrency,
    )
    logs: dict[str, list[float]] = {}
    for part in parts:
        for key, values in part.extra_logs.items():
            logs.setdefault(key, []).extend(values)
    return RewardsResult(
        rewards=[r for p in parts for r in p.rewards],
        scores=[s for p in parts for s in p.scores],
        extra_logs=logs,
    )


def _get_reward_run(
    config: ClientConfig, offset: int, body: dict[str, Any], expected: int, call_budget: Budget
) -> Call[RewardsResult]:
    try:
        data = yield from request(config, "POST", "/get_reward", body, call_budget)
    except CriticRMHTTPError as exc:
        raise shift_item_index(exc, offset) from exc
    return rewards_result(data, expected)


# --------------------------------------------------------------------------- parsing


def decode(resp: httpx.Response, method: str, path: str) -> Any:
    """The JSON body of a successful answer."""
    try:
        return resp.json()
    except ValueError as exc:
        raise CriticRMError(f"{method} {path}: response is not JSON: {resp.text[:200]!r}") from exc


def http_error(resp: httpx.Response, method: str, path: str) -> CriticRMHTTPError:
    """The error of a non-2xx answer, from the service's JSON error body when there is one."""
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
        retry_after=parse_retry_after(resp.headers.get("retry-after")),
        method=method,
        path=path,
    )


def shift_item_index(err: CriticRMHTTPError, offset: int) -> CriticRMHTTPError:
    """Rewrite ``items[k]`` (``query[k]``) in a split request's error to the index in the
    caller's whole list."""
    if offset == 0 or err.field is None or not _ITEM_INDEX.match(err.field):
        return err

    def shift(text: str) -> str:
        return _ITEM_INDEX.sub(lambda m: f"{m.group(1)}[{int(m.group(2)) + offset}]", text, count=1)

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


def score_result(data: Any, expected: int) -> ScoreResult:
    """A ``/score`` answer for ``expected`` items."""
    try:
        out = ScoreResult(
            model_version=str(data["model_version"]),
            results=[_item_score(r) for r in data["results"]],
            usage=_usage(data.get("usage")),
            warnings=[str(w) for w in data.get("warnings", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CriticRMError(f"malformed /score response: {describe(exc)}") from exc
    if len(out.results) != expected:
        raise CriticRMError(f"/score returned {len(out.results)} results for {expected} items")
    return out


def merge(parts: Sequence[ScoreResult]) -> ScoreResult:
    """The split requests' results as one, in order (all of one model version)."""
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


def critique_result(data: Any) -> CritiqueResult:
    """A ``/critique`` answer."""
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
        raise CriticRMError(f"malformed /critique response: {describe(exc)}") from exc


def rewards_result(data: Any, expected: int) -> RewardsResult:
    """A ``/get_reward`` answer for ``expected`` queries."""
    try:
        out = RewardsResult(
            rewards=[float(r) for r in data["rewards"]],
            scores=[float(s) for s in data.get("scores", data["rewards"])],
            extra_logs={
                str(k): [float(x) for x in v] for k, v in (data.get("extra_logs") or {}).items()
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CriticRMError(f"malformed /get_reward response: {describe(exc)}") from exc
    if len(out.rewards) != expected:
        raise CriticRMError(f"/get_reward returned {len(out.rewards)} rewards for {expected}")
    return out


def ready_status(resp: httpx.Response) -> ReadyStatus:
    """A ``/ready`` answer: 503 is a not-ready status, not an error; any other failure is."""
    if resp.status_code not in (200, 503):
        raise http_error(resp, "GET", "/ready")
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
