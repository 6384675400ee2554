"""POST /compare: SyncPL's pairwise judgment of 2-4 responses (service.scoring.compare)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from service.api.auth import require_api_key
from service.api.compare_schemas import CompareRequest, CompareResponse, CompareUsage, PairOut
from service.api.deadlines import Deadline
from service.api.deps import ERRORS, Service
from service.scoring.compare import Comparer
from service.scoring.core import RewardService

router = APIRouter(responses=ERRORS, dependencies=[Depends(require_api_key)])


@router.post("/compare", response_model=CompareResponse)
async def compare(
    body: CompareRequest, service: Service, deadline: Deadline
) -> CompareResponse | Response:
    return await deadline.run(lambda at: _compare(body, service, at))


async def _compare(body: CompareRequest, service: RewardService, at: float) -> CompareResponse:
    runtime = service.model.require_runtime()
    opts = body.compare_options(runtime.manifest.sampling, service.settings)
    prompt: Any = (
        body.prompt if isinstance(body.prompt, str) else [m.model_dump() for m in body.prompt]
    )
    out = await Comparer(service).compare(prompt, list(body.responses), opts, runtime, at)
    return CompareResponse(
        model_version=out.model_version,
        pairs=[PairOut.of(p) for p in out.pairs],
        ranking=out.ranking,
        rewards=out.rewards,
        usage=CompareUsage(judge_tokens=out.judge_tokens),
        warnings=out.warnings,
    )
