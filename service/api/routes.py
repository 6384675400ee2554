"""HTTP routes: thin handlers over RewardService."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.auth import key_source, require_admin_key, require_api_key
from service.api.errors import error_response
from service.api.schemas import (
    CritiqueOut,
    CritiqueRequest,
    CritiqueResponse,
    ErrorResponse,
    GetRewardRequest,
    GetRewardResponse,
    ReloadRequest,
    SamplingFields,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    Usage,
)
from service.checkpoint.store import CheckpointError
from service.core.errors import InvalidRequest, ReloadFailed, ShuttingDown, public_message
from service.core.formatting import ROLES
from service.core.service import RewardService, ScoreOptions
from service.engines.dtype import generator_dtype
from service.engines.factory import ModelRuntime

T = TypeVar("T")

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 413, 422, 429, 503, 504)
}


DEADLINE_HEADER = "X-Request-Timeout"


def get_service(request: Request) -> RewardService:
    service: RewardService = request.app.state.service
    return service


async def request_deadline(
    request: Request,
    timeout: Annotated[float | None, Header(alias=DEADLINE_HEADER)] = None,
) -> float:
    """The request's deadline on the event loop's clock (header, else the default)."""
    settings = request.app.state.settings
    value = settings.request_timeout_s if timeout is None else timeout
    if not 0 < value <= settings.max_request_timeout_s:
        raise InvalidRequest(
            DEADLINE_HEADER, f"must be in (0, {settings.max_request_timeout_s}] seconds"
        )
    return asyncio.get_running_loop().time() + value


Service = Annotated[RewardService, Depends(get_service)]
Deadline = Annotated[float, Depends(request_deadline)]


async def until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | Response:
    """Run a handler's work, but drop it (and its queued items) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the handler itself was cancelled: its queued items must go too
        task.add_done_callback(_retrieve)
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    request.app.state.metrics.request_failures.labels("client_disconnected").inc()
    return error_response(499, "client_closed_request", "client disconnected")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Nobody waits for an abandoned handler's outcome: mark it seen (no asyncio warning)."""
    if not task.cancelled():
        task.exception()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def score(
    body: ScoreRequest, service: Service, deadline: Deadline, request: Request
) -> ScoreResponse | Response:
    return await cancel_on_disconnect(request, _score(body, service, deadline))


async def _score(body: ScoreRequest, service: RewardService, deadline: float) -> ScoreResponse:
    runtime = service.require_runtime()
    opts = _options(service, runtime, body, body.num_critiques, "num_critiques")
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


@router.post(
    "/critique",
    response_model=CritiqueResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def critique(
    body: CritiqueRequest, service: Service, deadline: Deadline, request: Request
) -> CritiqueResponse | Response:
    return await cancel_on_disconnect(request, _critique(body, service, deadline))


async def _critique(
    body: CritiqueRequest, service: RewardService, deadline: float
) -> CritiqueResponse:
    runtime = service.require_runtime()
    n = body.n if body.n is not None else max(runtime.manifest.sampling.num_critiques, 1)
    opts = _options(service, runtime, body, n, "n")
    outcome = await service.score([(_prompt(body.prompt), body.response)], opts, deadline, runtime)
    item = outcome.items[0]
    critiques = [
        CritiqueOut(text=c.text, reward=r, finish_reason=c.finish_reason)
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


@router.post(
    "/get_reward",
    response_model=GetRewardResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def get_reward(
    body: GetRewardRequest, service: Service, deadline: Deadline, request: Request
) -> GetRewardResponse | Response:
    """OpenRLHF remote reward model (`--remote_rm_url http://host:8000/get_reward`)."""
    return await cancel_on_disconnect(request, _get_reward(body, service, deadline))


async def _get_reward(
    body: GetRewardRequest, service: RewardService, deadline: float
) -> GetRewardResponse:
    runtime = service.require_runtime()
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise InvalidRequest(
            "prompts", f"has {len(body.prompts)} entries for {len(body.query)} queries"
        )
    pairs: list[tuple[Any, str]] = []
    for i, query in enumerate(body.query):
        prompt = body.prompts[i] if body.prompts is not None else None
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
        pairs.append((messages, response))
    # Defaults from the checkpoint; rollouts are long, so an over-long prompt is cut from the
    # left rather than failing the whole rollout batch.
    opts = service.resolve_options(
        runtime,
        num_critiques=None,
        temperature=None,
        top_p=None,
        max_critique_tokens=None,
        truncate_prompt=True,
    )
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


@router.post("/admin/reload", responses=ERRORS, dependencies=[Depends(require_admin_key)])
async def admin_reload(
    service: Service, request: Request, body: ReloadRequest | None = None
) -> dict[str, Any]:
    """Load a version (default: the root's `current`) beside the served one, swap, announce it
    to the other replicas. A version given here is pinned until a reload without one; naming
    the version already served changes nothing but the pin."""
    version = body.version if body is not None else None
    try:
        outcome = await service.reload(version)
    except CheckpointError as exc:
        raise InvalidRequest("version", str(exc)) from exc
    except ShuttingDown:
        raise
    except Exception as exc:
        raise ReloadFailed(
            f"{type(exc).__name__}: {exc}; still serving the previous version"
        ) from exc
    service.follow_current = version is None
    # Announced even when unchanged here: a replica that missed an earlier announcement
    # converges, and for the others it is a no-op.
    await request.app.state.watcher.announce(version)
    return {
        "status": outcome.status,
        "model_version": outcome.model_version,
        "previous": outcome.previous,
        "follow_current": service.follow_current,
    }


@router.get("/health", responses={503: {"description": "Engines dead"}})
async def health(service: Service) -> JSONResponse:
    """Liveness. After an engine batch failed, this runs a real tiny forward first; 503 once
    the engines are dead (the process then exits for the orchestrator to restart it)."""
    if service.engine_suspect and not service.engine_dead:
        await service.probe()
    if service.engine_dead:
        return JSONResponse(
            {"status": "dead", "error": public_message(service.error or "")}, status_code=503
        )
    return JSONResponse({"status": "alive"})


@router.get("/ready", responses={503: {"description": "Not ready"}})
async def ready(service: Service, request: Request) -> JSONResponse:
    """Readiness: engines loaded and warmed up, and API keys that can be checked (a replica
    whose key source is broken denies everything, so it takes no traffic)."""
    runtime = service.runtime
    auth = key_source(request).state()
    if service.state != "ready" or runtime is None:
        error = public_message(service.error) if service.error else None
        body = {"status": service.state, "error": error, "auth": auth.mode}
        return JSONResponse(body, status_code=503)
    if auth.mode == "unavailable":
        body = {"status": "auth_unavailable", "error": auth.reason, "auth": auth.mode}
        return JSONResponse(body, status_code=503)
    warnings = service.model_warnings(runtime)
    if auth.mode == "open":
        warnings = [*warnings, OPEN_WARNING]
    elif auth.reason:
        warnings = [*warnings, f"auth: {auth.reason}"]
    return JSONResponse(
        {
            "status": "ready",
            "model_version": runtime.model_version,
            "auth": auth.mode,
            "warnings": warnings,
        }
    )


OPEN_WARNING = "auth is open: no API key source is configured (set CRM_API_KEYS_FILE)"


@router.get("/info", dependencies=[Depends(require_api_key)], responses=ERRORS)
async def info(service: Service) -> dict[str, Any]:
    """What is served, with which defaults and limits (no server paths)."""
    s = service.settings
    out: dict[str, Any] = {
        "status": service.state,
        "error": public_message(service.error) if service.error else None,
        "limits": {
            "max_items_per_request": s.max_items_per_request,
            "max_num_critiques": s.max_num_critiques,
            "max_critique_tokens": s.max_critique_tokens,
            "max_temperature": s.max_temperature,
            "max_model_len": s.max_model_len,
        },
        "engines": {
            "generator": {"backend": s.generator_backend, "dtype": generator_dtype(s)},
            "scorer": {"backend": s.scorer_backend, "dtype": s.scorer_dtype},
        },
        "batching": {
            "max_items": s.batch_max_items,
            "max_tokens": s.batch_max_tokens,
            "max_wait_ms": s.batch_max_wait_ms,
        },
        "cache": {"backend": service.cache.backend},
    }
    runtime = service.runtime
    if runtime is not None:
        m = runtime.manifest
        out.update(
            model_version=m.model_version,
            # A base model loaded from a directory is named by the directory alone.
            base_model=m.base_model.rsplit("/", 1)[-1]
            if m.base_model.startswith("/")
            else m.base_model,
            reward_head_trained=m.reward_head_trained,
            reward_stats=m.reward_stats.model_dump() if m.reward_stats else None,
            defaults=m.sampling.model_dump(),
            reward_token=m.reward_token,
            warnings=service.model_warnings(runtime),
        )
    last = service.last_reload
    if last is not None and isinstance(last.get("error"), str):
        last = {**last, "error": public_message(str(last["error"]))}
    out["reload"] = {"follow_current": service.follow_current, "last": last}
    return out


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
async def openapi(request: Request) -> JSONResponse:
    """The API schema; behind the scoring key once keys are configured."""
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False, dependencies=[Depends(require_api_key)])
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="critic-rm")


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _options(
    service: RewardService,
    runtime: ModelRuntime,
    body: SamplingFields,
    num_critiques: int | None,
    field_m: str,
) -> ScoreOptions:
    """The sampling fields /score and /critique share, resolved against the checkpoint."""
    return service.resolve_options(
        runtime,
        num_critiques=num_critiques,
        temperature=body.temperature,
        top_p=body.top_p,
        max_critique_tokens=body.max_critique_tokens,
        truncate_prompt=body.truncate_prompt,
        use_cache=body.use_cache,
        field_m=field_m,
    )


def _prompt(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
