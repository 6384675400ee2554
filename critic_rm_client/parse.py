"""Answers into results: the JSON body, the error of a non-2xx answer (with its ``Retry-After``),
split requests' item indices mapped back to the caller's list, and the typed results."""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx

from critic_rm_client.errors import CriticRMError, CriticRMHTTPError, describe
from critic_rm_client.results import (
    CompareResult,
    Critique,
    CritiqueParts,
    CritiqueResult,
    ItemScore,
    PairJudgment,
    ReadyStatus,
    Refined,
    RefineResult,
    RefineRound,
    RewardsResult,
    ScoreResult,
    Usage,
)

_ITEM_INDEX = re.compile(r"^(items|query)\[(\d+)\]")


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


def merge_rewards(parts: Sequence[RewardsResult]) -> RewardsResult:
    """Split `/get_reward` answers back into one, in request order."""
    logs: dict[str, list[float]] = {}
    for part in parts:
        for key, values in part.extra_logs.items():
            logs.setdefault(key, []).extend(values)
    return RewardsResult(
        rewards=[r for p in parts for r in p.rewards],
        scores=[s for p in parts for s in p.scores],
        extra_logs=logs,
    )


def critique_result(data: Any) -> CritiqueResult:
    """A ``/critique`` answer."""
    try:
        return CritiqueResult(
            model_version=str(data["model_version"]),
            critiques=[
                Critique(
                    str(c["text"]),
                    float(c["reward"]),
                    str(c.get("finish_reason", "")),
                    _text_or_none(c.get("analysis")),
                    _text_or_none(c.get("suggestions")),
                    _text_or_none(c.get("verdict")),
                )
                for c in data["critiques"]
            ],
            reward=float(data["reward"]),
            cached=bool(data.get("cached", False)),
            usage=_usage(data.get("usage")),
            warnings=[str(w) for w in data.get("warnings", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CriticRMError(f"malformed /critique response: {describe(exc)}") from exc


def refine_result(data: Any) -> RefineResult:
    """A ``/refine`` answer."""
    try:
        best = data["best"]
        return RefineResult(
            model_version=str(data["model_version"]),
            best_response=str(best["response"]),
            best_reward=float(best["reward"]),
            best_round=int(best["round"]),
            original=_refined(data["original"]),
            rounds=[
                RefineRound(
                    int(r["round"]),
                    _parts(r["critique"]),
                    [_refined(c) for c in r["candidates"]],
                    bool(r["improved"]),
                )
                for r in data["rounds"]
            ],
            stop_reason=str(data["stop_reason"]),
            usage=_usage(data.get("usage")),
            revision_tokens=int((data.get("usage") or {}).get("revision_tokens", 0)),
            warnings=[str(w) for w in data.get("warnings", [])],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CriticRMError(f"malformed /refine response: {describe(exc)}") from exc


def compare_result(data: Any, n_responses: int) -> CompareResult:
    """A ``/compare`` answer for ``n_responses`` responses."""
    try:
        pairs = [
            PairJudgment(
                a=int(p["a"]),
                b=int(p["b"]),
                preference=str(p["preference"]),
                p_a=float(p["p_a"]),
                bt_p_a=float(p["bt_p_a"]),
                votes={str(k): int(v) for k, v in (p.get("votes") or {}).items()},
                consistency=float(p.get("consistency", 0.0)),
                position_disagreement=bool(p.get("position_disagreement", False)),
                identical=bool(p.get("identical", False)),
                trajectories=[dict(t) for t in p.get("trajectories") or []],
            )
            for p in data["pairs"]
        ]
        ranking = data.get("ranking")
        out = CompareResult(
            model_version=str(data["model_version"]),
            pairs=pairs,
            ranking=None if ranking is None else [int(i) for i in ranking],
            rewards=[float(r) for r in data["rewards"]],
            judge_tokens=int((data.get("usage") or {}).get("judge_tokens", 0)),
            warnings=[str(w) for w in data.get("warnings", [])],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CriticRMError(f"malformed /compare response: {describe(exc)}") from exc
    if len(out.rewards) != n_responses:
        raise CriticRMError(f"/compare returned {len(out.rewards)} rewards for {n_responses}")
    return out


def _parts(c: Mapping[str, Any]) -> CritiqueParts:
    return CritiqueParts(
        str(c["text"]),
        str(c.get("analysis") or ""),
        str(c.get("suggestions") or ""),
        _text_or_none(c.get("verdict")),
    )


def _refined(s: Mapping[str, Any]) -> Refined:
    return Refined(
        response=str(s["response"]),
        reward=float(s["reward"]),
        critique_rewards=[float(x) for x in s.get("critique_rewards", [])],
        critiques=[_parts(c) for c in s.get("critiques", [])],
        cached=bool(s.get("cached", False)),
    )


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


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
