"""How the client talks to the service: ``ClientConfig`` (URL, key, batching, retries, timeouts),
the names of the options a call takes, and the check that refuses a misspelt one."""

from __future__ import annotations

import dataclasses
import difflib
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import httpx

USER_AGENT = "critic-rm-client/0.1"


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


class CritiqueOptions(SamplingOptions, total=False):
    """The options of ``critique``: the sampling options and ``format`` (``"structured"``:
    each critique closed by a constrained verdict line and split into its parts)."""

    format: Literal["text", "structured"] | None


class PolicyOption(TypedDict):
    """An external OpenAI-compatible policy for ``refine``: its base URL (under the service's
    allow-list) and the model it serves. Its API key is the service operator's, not sent."""

    url: str
    model: str


class RefineOptions(SamplingOptions, total=False):
    """The options of ``refine``: the sampling options of the critiques, and the loop's."""

    rounds: int | None
    candidates: int | None
    num_critiques: int | None
    stop: Literal["verdict", "no_improvement", "never"] | None
    max_revision_tokens: int | None
    revision_temperature: float | None
    policy: PolicyOption | None


class CompareOptions(TypedDict, total=False):
    """The options of ``compare``; unset ones take the service's defaults."""

    criteria: list[str] | None
    num_criteria: int | None
    samples: int | None
    temperature: float | None
    top_p: float | None
    max_rubric_tokens: int | None
    score_reading: Literal["expected", "greedy"] | None


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
CRITIQUE_OPTION_NAMES: frozenset[str] = CritiqueOptions.__optional_keys__
REFINE_OPTION_NAMES: frozenset[str] = RefineOptions.__optional_keys__
COMPARE_OPTION_NAMES: frozenset[str] = CompareOptions.__optional_keys__


def option_fields(options: Mapping[str, Any], known: Collection[str]) -> dict[str, Any]:
    """The request fields of ``options`` (names checked against ``known``); unset ones are
    left out so the service applies the checkpoint's defaults."""
    check_names(options, known, "option")
    out = {k: v for k, v in options.items() if v is not None}
    if not out.get("return_critiques", True):
        del out["return_critiques"]  # the service's default; keeps the request minimal
    return out
