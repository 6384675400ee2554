"""Admin routes (CRM_ADMIN_API_KEY): load another checkpoint version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from service.api.auth import require_admin_key
from service.api.deps import ERRORS, Model
from service.api.schemas import ReloadRequest
from service.checkpoint.store import CheckpointError
from service.model.errors import ReloadFailed, ShuttingDown
from service.scoring.errors import InvalidRequest

router = APIRouter(responses=ERRORS, dependencies=[Depends(require_admin_key)])


@router.post("/admin/reload")
async def admin_reload(
    model: Model, request: Request, body: ReloadRequest | None = None
) -> dict[str, Any]:
    """Load a version (default: the root's `current`) beside the served one, swap, announce it
    to the other replicas. A version given here is pinned until a reload without one; naming
    the version already served changes nothing but the pin."""
    version = body.version if body is not None else None
    try:
        outcome = await model.reload(version)
    except CheckpointError as exc:
        raise InvalidRequest("version", str(exc)) from exc
    except ShuttingDown:
        raise
    except Exception as exc:
        raise ReloadFailed(
            f"{type(exc).__name__}: {exc}; still serving the previous version"
        ) from exc
    model.pin(version)
    # Announced even when unchanged here: a replica that missed an earlier announcement
    # converges, and for the others it is a no-op.
    await request.app.state.watcher.announce(version)
    return {
        "status": outcome.status,
        "model_version": outcome.model_version,
        "previous": outcome.previous,
        "follow_current": model.follow_current,
    }
