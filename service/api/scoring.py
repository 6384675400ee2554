"""The scoring routes: /score (items) and /critique (one pair, with its critiques)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from service.api.auth import require_api_key
from service.api.deadlines import Deadline
from service.api.deps import ERRORS, Service
from service.api.schemas import (
    CritiqueOut,
    CritiqueRequest,
    CritiqueResponse,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    Usage,
)
from service.checkpoint.critique_format import parse as parse_critique
from service.scoring.core import RewardService

router = APIRouter(responses=ERRORS, dependencies=[Depends(require_api_key)])


@router.post("/score", response_model=ScoreResponse)
async def score(
    body: ScoreRequest, service: Service, deadline: Deadline
) -> ScoreResponse | Response:
    return await deadline.run(lambda at: _score(body, service, at))


async def _score(body: ScoreRequest, service: RewardService, deadline: float) -> ScoreResponse:
    runtime = service.model.require_runtime()
    opts = body.options(runtime.manifest.sampling, service.limits)
    pairs = [(_prompt(i.prompt), i.response) for i in body.items]
    outcome = await service.score(pairs, opts, deadline, runtime)
    results = [
        ScoreResult(
            reward=s.result.reward,
            critique_rewards=s.result.critique_rewards,
            reward_std=s.result.reward_std,
            critiques=[c.text for c in s.result.critiques] if body.return_critiques else None,
            cached=s.cached,
        )
        for s in outcome.items
    ]
    usage = Usage(
        prompt_tokens=sum(s.result.prompt_tokens for s in outcome.items),
        critique_tokens=sum(s.result.critique_tokens for s in outcome.items),
    )
    return ScoreResponse(
        model_version=outcome.model_version, results=results, usage=usage, warnings=outcome.warnings
    )


# Unset fields are left out, so a text critique carries no empty structured parts.
@router.post("/critique", response_model=CritiqueResponse, response_model_exclude_unset=True)
async def critique(
    body: CritiqueRequest, service: Service, deadline: Deadline
) -> CritiqueResponse | Response:
    return await deadline.run(lambda at: _critique(body, service, at))


async def _critique(
    body: CritiqueRequest, service: RewardService, deadline: float
) -> CritiqueResponse:
    runtime = service.model.require_runtime()
    opts = body.options(runtime.manifest.sampling, service.limits)
    outcome = await service.score([(_prompt(body.prompt), body.response)], opts, deadline, runtime)
    item = outcome.items[0]
    critiques = [
        _structured(c.text, r, c.finish_reason)
        if opts.structured
        else CritiqueOut(text=c.text, reward=r, finish_reason=c.finish_reason)
        for c, r in zip(item.result.critiques, item.result.critique_rewards, strict=True)
    ]
    return CritiqueResponse(
        model_version=outcome.model_version,
        critiques=critiques,
        reward=item.result.reward,
        cached=item.cached,
        usage=Usage(
            prompt_tokens=item.result.prompt_tokens, critique_tokens=item.result.critique_tokens
        ),
        warnings=outcome.warnings,
    )


def _structured(text: str, reward: float, finish_reason: str) -> CritiqueOut:
    parts = parse_critique(text)
    return CritiqueOut(
        text=text,
        reward=reward,
        finish_reason=finish_reason,
        analysis=parts.analysis,
        suggestions=parts.suggestions,
        verdict=parts.verdict,
    )


def _prompt(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
