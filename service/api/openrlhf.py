"""OpenRLHF's remote reward model protocol (`--remote_rm_url http://host:8000/get_reward`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from service.api.auth import require_api_key
from service.api.deadlines import Deadline
from service.api.deps import ERRORS, Service
from service.api.schemas import GetRewardRequest, GetRewardResponse
from service.contract.formatting import ROLES
from service.contract.options import ScoreOptions
from service.model.runtime import ModelRuntime
from service.scoring.core import RewardService
from service.scoring.errors import InvalidRequest

router = APIRouter(responses=ERRORS, dependencies=[Depends(require_api_key)])


@router.post("/get_reward", response_model=GetRewardResponse)
async def get_reward(
    body: GetRewardRequest, service: Service, deadline: Deadline
) -> GetRewardResponse | Response:
    """OpenRLHF remote reward model (`--remote_rm_url http://host:8000/get_reward`)."""
    return await deadline.run(lambda at: _get_reward(body, service, at))


async def _get_reward(
    body: GetRewardRequest, service: RewardService, deadline: float
) -> GetRewardResponse:
    runtime = service.model.require_runtime()
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise InvalidRequest(
            "prompts", f"has {len(body.prompts)} entries for {len(body.query)} queries"
        )
    pairs = [
        _split(runtime, i, query, body.prompts[i] if body.prompts is not None else None)
        for i, query in enumerate(body.query)
    ]
    # Defaults from the checkpoint; rollouts are long, so an over-long prompt is cut from the
    # left rather than failing the whole rollout batch.
    opts = ScoreOptions.resolve(runtime.manifest.sampling, service.limits, truncate_prompt=True)
    outcome = await service.score(pairs, opts, deadline, runtime)
    rewards = [s.result.reward for s in outcome.items]
    return GetRewardResponse(
        rewards=rewards,
        scores=rewards,
        extra_logs={
            "critic_rm_reward_std": [s.result.reward_std for s in outcome.items],
            "critic_rm_critique_tokens": [float(s.result.critique_tokens) for s in outcome.items],
        },
    )


def _split(runtime: ModelRuntime, i: int, query: str, prompt: str | None) -> tuple[Any, str]:
    """A rendered prompt+response text back into (chat messages, response)."""
    if len(query) > runtime.formatter.max_chars:
        raise InvalidRequest(
            f"query[{i}]", f"over {runtime.formatter.max_chars} characters: cannot fit"
        )
    try:
        messages, response = runtime.formatter.split_rendered(query, prompt)
    except ValueError as exc:
        raise InvalidRequest(f"query[{i}]", str(exc)) from exc
    bad = [m["role"] for m in messages if m["role"] not in ROLES]
    if bad:
        raise InvalidRequest(
            f"query[{i}]", f"chat role {bad[0][:32]!r} is not one of {', '.join(ROLES)}"
        )
    if not response.strip():
        raise InvalidRequest(f"query[{i}]", "the response part is empty")
    return messages, response
