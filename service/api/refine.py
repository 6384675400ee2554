"""POST /refine: the critique-revision loop over one response (service.scoring.refine)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response

from service.api.auth import require_api_key
from service.api.deadlines import Deadline
from service.api.deps import ERRORS, Service
from service.api.refine_schemas import (
    BestResponse,
    CritiqueParts,
    RefineRequest,
    RefineResponse,
    RefineRound,
    RefineUsage,
    ScoredResponse,
)
from service.engines.chat_endpoint import ExternalPolicy
from service.scoring.core import RewardService
from service.scoring.errors import InvalidRequest
from service.scoring.policy import URL_FIELD, Policy, ServedPolicy, check_policy_url
from service.scoring.refine import Refiner

router = APIRouter(responses={**ERRORS, 502: ERRORS[503]}, dependencies=[Depends(require_api_key)])


@router.post("/refine", response_model=RefineResponse)
async def refine(
    body: RefineRequest, service: Service, deadline: Deadline
) -> RefineResponse | Response:
    return await deadline.run(lambda at: _refine(body, service, at))


async def _refine(body: RefineRequest, service: RewardService, deadline: float) -> RefineResponse:
    runtime = service.model.require_runtime()
    opts = body.refine_options(runtime.manifest.sampling, service.settings)
    policy: Policy = ServedPolicy(runtime)
    if body.policy is not None:
        limits = service.settings.policy_limits()
        try:
            await asyncio.wait_for(
                asyncio.to_thread(check_policy_url, body.policy.url, limits), limits.timeout_s
            )
        except asyncio.TimeoutError:
            raise InvalidRequest(URL_FIELD, "the host did not resolve in time") from None
        policy = ExternalPolicy(body.policy.url, body.policy.model, limits)
    prompt: Any = (
        body.prompt if isinstance(body.prompt, str) else [m.model_dump() for m in body.prompt]
    )
    out = await Refiner(service).refine(prompt, body.response, opts, policy, runtime, deadline)
    return RefineResponse(
        model_version=out.model_version,
        best=BestResponse(response=out.best.response, reward=out.best.reward, round=out.best_round),
        original=ScoredResponse.of(out.original),
        rounds=[
            RefineRound(
                round=r.round,
                critique=CritiqueParts.of(r.critique),
                candidates=[ScoredResponse.of(c) for c in r.candidates],
                improved=r.improved,
            )
            for r in out.rounds
        ],
        stop_reason=out.stop_reason,
        usage=RefineUsage(
            prompt_tokens=out.usage.prompt_tokens,
            critique_tokens=out.usage.critique_tokens,
            revision_tokens=out.usage.revision_tokens,
        ),
        warnings=out.warnings,
    )
