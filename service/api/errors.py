"""JSON errors that name the offending field: {"error": {"code", "message", "field"}}."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.contract.options import OptionError
from service.engines.chat_endpoint import PolicyFailure
from service.model.errors import NotReady, ReloadFailed, ShuttingDown
from service.scoring.errors import (
    DeadlineExceeded,
    EngineFailure,
    InvalidRequest,
    Overloaded,
)

log = logging.getLogger(__name__)

_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+~-]+/)*[\w.@+~-]+")


def public_message(text: str) -> str:
    """An error text fit for a public answer: absolute server paths become `<path>` (the
    full text goes to the log)."""
    return _ABS_PATH.sub("<path>", text)


class AuthError(Exception):
    """401 (no credentials), 403 (credentials not valid for this route) or 503 (no key source
    can be checked: every request is denied until it is fixed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _printable(text: str) -> str:
    """Messages may echo client input; lone surrogates cannot be encoded as UTF-8 JSON."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    # Every error answer passes here, so no path reaches a client whatever raised it.
    body: dict[str, Any] = {"code": code, "message": _printable(public_message(message))}
    if field is not None:
        body["field"] = _printable(field)
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


def field_path(loc: Sequence[int | str]) -> str:
    """('body', 'items', 3, 'prompt') -> 'items[3].prompt'."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ChatMessage]"):
            continue  # union branch names pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # The deepest location is the most specific: a prompt that is a list of messages with
        # a bad role fails both union branches, and `prompt[0].role` says more than `prompt`.
        first = (
            max(errors, key=lambda e: len(e.get("loc", ())))
            if errors
            else {"loc": ("body",), "msg": "invalid request"}
        )
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_json", f"malformed JSON: {first['msg']}", "body")
        field = field_path(first.get("loc", ("body",)))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        extra = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        return error_response(422, "invalid_request", f"{field}: {msg}{extra}", field)

    @app.exception_handler(OptionError)
    @app.exception_handler(InvalidRequest)
    async def _invalid(_req: Request, exc: InvalidRequest | OptionError) -> JSONResponse:
        return error_response(
            exc.status,
            "invalid_request",
            f"{exc.field}: {exc.message}",
            exc.field,
        )

    @app.exception_handler(NotReady)
    async def _not_ready(_req: Request, exc: NotReady) -> JSONResponse:
        return error_response(503, "not_ready", str(exc), None, **{"Retry-After": "5"})

    @app.exception_handler(EngineFailure)
    async def _engine(_req: Request, exc: EngineFailure) -> JSONResponse:
        return error_response(503, "engine_error", str(exc), None, **{"Retry-After": "1"})

    @app.exception_handler(PolicyFailure)
    async def _policy(_req: Request, exc: PolicyFailure) -> JSONResponse:
        return error_response(502, "policy_error", str(exc), "policy")

    @app.exception_handler(Overloaded)
    async def _overloaded(_req: Request, exc: Overloaded) -> JSONResponse:
        return error_response(
            429, "overloaded", str(exc), None, **{"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(ReloadFailed)
    async def _reload_failed(_req: Request, exc: ReloadFailed) -> JSONResponse:
        return error_response(503, "reload_failed", str(exc))

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(_req: Request, exc: ShuttingDown) -> JSONResponse:
        return error_response(503, "shutting_down", str(exc), None, **{"Retry-After": "1"})

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(_req: Request, exc: DeadlineExceeded) -> JSONResponse:
        return error_response(504, "deadline_exceeded", str(exc))

    @app.exception_handler(AuthError)
    async def _auth(_req: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.status == 503:
            headers["Retry-After"] = "5"
        code = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "auth_unavailable")
        return error_response(exc.status, code, exc.message, None, **headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        field = "body" if exc.status_code in (408, 413) else None
        headers = dict(exc.headers or {})  # e.g. Allow on a 405
        return error_response(exc.status_code, code, str(exc.detail), field, **headers)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        # The exception text can hold server paths and internals: it goes to the log under an
        # id the client can quote, never into the answer.
        incident = uuid.uuid4().hex[:12]
        log.exception("request failed (incident %s)", incident)
        return error_response(500, "internal_error", f"internal error (incident {incident})")
