"""Errors as HTTP answers: one JSON shape, the right status, never a traceback to the client.

Every refusal is ``{"success": false, "error": {"kind", "message"}, "detail": message}``
(``detail`` is what FastAPI clients read); routes under ``/sdapi/`` answer in A1111's
shape, ``{"error", "detail", "body", "errors"}``, so its clients show the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from daemon.errors import ConfigError, ImageError, PromptdError, TransientError
from daemon.pipeline.upload import UnsupportedImageError

log = structlog.get_logger("promptd.api")

KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_image",
         422: "invalid_request", 429: "busy", 503: "unavailable", 504: "timeout"}  # fmt: skip


class ApiError(Exception):
    """A refusal with its status, a short kind, a message for a person, and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or KINDS.get(status, "error")
        self.headers = dict(headers or {})


def from_pipeline(exc: BaseException) -> ApiError:
    """The answer for what the pipeline raised: 415, 422, 409, 503, or 422 for a bad value."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnsupportedImageError):
        return ApiError(415, exc.message, kind=exc.kind)
    if isinstance(exc, ImageError):
        return ApiError(422, exc.message, kind="bad_image")
    if isinstance(exc, ConfigError):
        return ApiError(409, f"{exc}; fix the rule file", kind="held")
    if isinstance(exc, TransientError):
        return ApiError(503, exc.message, kind="unavailable", headers={"Retry-After": "30"})
    if isinstance(exc, PromptdError):
        return ApiError(500, exc.message, kind=exc.kind)
    if isinstance(exc, ValueError):
        return ApiError(422, str(exc))
    log.error("api_internal_error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return ApiError(500, "internal error; see promptd's log", kind="internal")


def body(status: int, kind: str, message: str, path: str, extra: Any = None) -> dict[str, Any]:
    """The JSON of a refusal (A1111's shape under /sdapi/)."""
    if path.startswith("/sdapi/"):
        return {"error": kind, "detail": message, "body": "", "errors": extra or ""}
    answer: dict[str, Any] = {"success": False, "error": {"kind": kind, "message": message}}
    answer["detail"] = extra if extra is not None else message
    return answer


def answer(status: int, kind: str, message: str, path: str, **kw: Any) -> JSONResponse:
    """A JSONResponse for a refusal."""
    headers = kw.pop("headers", None)
    return JSONResponse(body(status, kind, message, path, kw.get("extra")), status, headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the shape above."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        err = exc if isinstance(exc, ApiError) else from_pipeline(exc)
        return answer(err.status, err.kind, err.message, request.url.path, headers=err.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        kind = KINDS.get(exc.status_code, "error")
        return answer(exc.status_code, kind, message, request.url.path, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [dict(e) for e in exc.errors()]
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in errors[:5]
        )
        safe = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return answer(422, "invalid_request", summary, request.url.path, extra=safe)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
