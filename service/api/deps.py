"""What the route handlers take from the app: the scoring service and the model manager."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.schemas import ErrorResponse
from service.model.manager import ModelManager
from service.scoring.core import RewardService

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 413, 422, 429, 503, 504)
}


def get_service(request: Request) -> RewardService:
    service: RewardService = request.app.state.service
    return service


def get_model(request: Request) -> ModelManager:
    model: ModelManager = request.app.state.model
    return model


Service = Annotated[RewardService, Depends(get_service)]
Model = Annotated[ModelManager, Depends(get_model)]
