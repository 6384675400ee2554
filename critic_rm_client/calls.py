"""The API calls (``critic_rm_client.steps`` explains what a call is), the same for the sync and
the async client:

- **Batching.** ``score`` splits the items into requests of at most ``max_batch_items`` and sends
  up to ``max_concurrency`` of them at once, then reassembles the results in input order.
- **One model version per call.** If a checkpoint reload lands between two split requests, the
  versions differ: the whole call is retried once, then ``CriticRMVersionMismatch`` is raised.
- Retries and deadlines are ``critic_rm_client.retry``'s.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from critic_rm_client.build import chunks, item_json, prompt_json
from critic_rm_client.config import (
    COMPARE_OPTION_NAMES,
    CRITIQUE_OPTION_NAMES,
    REFINE_OPTION_NAMES,
    SCORE_OPTION_NAMES,
    ClientConfig,
    option_fields,
)
from critic_rm_client.errors import (
    CriticRMError,
    CriticRMHTTPError,
    CriticRMUnavailable,
    CriticRMVersionMismatch,
)
from critic_rm_client.parse import (
    compare_result,
    critique_result,
    merge,
    merge_rewards,
    ready_status,
    refine_result,
    rewards_result,
    score_result,
    shift_item_index,
)
from critic_rm_client.results import (
    CompareResult,
    CritiqueResult,
    Prompt,
    ReadyStatus,
    RefineResult,
    RewardsResult,
    ScoreItemLike,
    ScoreResult,
)
from critic_rm_client.retry import Budget, budget, request
from critic_rm_client.steps import Call, Gather, Send, Sleep


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
    body.update(option_fields(options, CRITIQUE_OPTION_NAMES))
    data = yield from request(config, "POST", "/critique", body, budget(config, deadline_s))
    return critique_result(data)


def refine(
    config: ClientConfig,
    prompt: Prompt,
    response: str,
    options: Mapping[str, Any],
    deadline_s: float | None = None,
) -> Call[RefineResult]:
    """``POST /refine``: critique-revision rounds over one response, on one model version."""
    body: dict[str, Any] = {"prompt": prompt_json(prompt), "response": response}
    fields = option_fields(options, REFINE_OPTION_NAMES)
    if "policy" in fields:
        policy = fields["policy"]
        fields["policy"] = {"url": str(policy["url"]), "model": str(policy["model"])}
    body.update(fields)
    data = yield from request(config, "POST", "/refine", body, budget(config, deadline_s))
    return refine_result(data)


def compare(
    config: ClientConfig,
    prompt: Prompt,
    responses: Sequence[str],
    options: Mapping[str, Any],
    deadline_s: float | None = None,
) -> Call[CompareResult]:
    """``POST /compare``: every pair of 2-4 responses judged in both orders."""
    if not 2 <= len(responses) <= 4:
        raise ValueError(f"compare() takes 2 to 4 responses, got {len(responses)}")
    body: dict[str, Any] = {"prompt": prompt_json(prompt), "responses": list(responses)}
    body.update(option_fields(options, COMPARE_OPTION_NAMES))
    data = yield from request(config, "POST", "/compare", body, budget(config, deadline_s))
    return compare_result(data, len(responses))


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
    return merge_rewards(parts)


def _get_reward_run(
    config: ClientConfig, offset: int, body: dict[str, Any], expected: int, call_budget: Budget
) -> Call[RewardsResult]:
    try:
        data = yield from request(config, "POST", "/get_reward", body, call_budget)
    except CriticRMHTTPError as exc:
        raise shift_item_index(exc, offset) from exc
    return rewards_result(data, expected)
