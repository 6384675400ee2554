"""What orchestrators and operators ask: liveness, readiness, what is served, metrics, and the
API's own description."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.auth import key_source, require_api_key
from service.api.deps import ERRORS, Model, Service
from service.api.errors import public_message

router = APIRouter()

OPEN_WARNING = "auth is open: no API key source is configured (set CRM_API_KEYS_FILE)"


@router.get("/health", responses={503: {"description": "Engines dead"}})
async def health(model: Model) -> JSONResponse:
    """Liveness. After an engine batch failed, this runs a real tiny forward first; 503 once
    the engines are dead (the process then exits for the orchestrator to restart it)."""
    h = model.health
    if h.suspect:
        await h.probe()
    if h.dead:
        return JSONResponse(
            {"status": "dead", "error": public_message(h.error or "")}, status_code=503
        )
    return JSONResponse({"status": "alive"})


@router.get("/ready", responses={503: {"description": "Not ready"}})
async def ready(model: Model, request: Request) -> JSONResponse:
    """Readiness: engines loaded and warmed up, and API keys that can be checked (a replica
    whose key source is broken denies everything, so it takes no traffic)."""
    runtime, h = model.runtime, model.health
    auth = key_source(request).state()
    if not h.ready or runtime is None:
        error = public_message(h.error) if h.error else None
        body = {"status": h.state.value, "error": error, "auth": auth.mode}
        return JSONResponse(body, status_code=503)
    if auth.mode == "unavailable":
        body = {"status": "auth_unavailable", "error": auth.reason, "auth": auth.mode}
        return JSONResponse(body, status_code=503)
    warnings = runtime.warnings
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


@router.get("/info", dependencies=[Depends(require_api_key)], responses=ERRORS)
async def info(service: Service, model: Model) -> dict[str, Any]:
    """What is served, with which defaults and limits (no server paths)."""
    s, h = service.settings, model.health
    out: dict[str, Any] = {
        "status": h.state.value,
        "error": public_message(h.error) if h.error else None,
        "limits": {
            "max_items_per_request": s.max_items_per_request,
            "max_num_critiques": s.max_num_critiques,
            "max_critique_tokens": s.max_critique_tokens,
            "max_temperature": s.max_temperature,
            "max_model_len": s.max_model_len,
        },
        "engines": {
            # The layout served: a format-1 checkpoint asked to run fused runs on one.
            "layout": model.runtime.layout if model.runtime is not None else s.layout(),
            "layout_setting": s.engine_layout,
            "generator": {"backend": s.generator_backend, "dtype": model.generator_dtype},
            "scorer": {"backend": s.scorer_backend, "dtype": s.scorer_dtype},
        },
        "batching": {
            "max_items": s.batch_max_items,
            "max_tokens": s.batch_max_tokens,
            "max_wait_ms": s.batch_max_wait_ms,
        },
        "cache": {"backend": service.cache.backend},
    }
    runtime = model.runtime
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
            warnings=runtime.warnings,
        )
    last = model.last_reload
    if last is not None and isinstance(last.get("error"), str):
        last = {**last, "error": public_message(str(last["error"]))}
    out["reload"] = {"follow_current": model.follow_current, "last": last}
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
