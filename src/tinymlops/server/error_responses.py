"""One mapping from the tinymlops error tree (and the framework's own errors) to JSON responses.

Every error answer has the body ``{"error": {"type": ..., "message": ..., <details>}}``:

====  ==========================================================================================
400   bad input: malformed JSON (``MalformedJSONError``), an invalid document or key
      (:class:`InvalidInputError`), a request that cannot be done as asked (:class:`UsageError`)
401   :class:`AuthenticationError` — no, malformed, unknown, expired or revoked credentials; a
      bad signature, a stale timestamp, a replayed nonce
403   :class:`AccessDeniedError` — a scope too small, another device's resource
404   :class:`NotFoundError`, or no such route
405   method not allowed on this route
409   :class:`ConflictError` — an enrolment token already used, a device already enrolled
413   :class:`PayloadTooLargeError` — the body is over the server's limit
422   the body or parameters do not match the schema (``ValidationError``; ``errors`` lists them)
500   anything unexpected: a generic message, the details only in the server log
503   the metadata database is unavailable or busy
====  ==========================================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException

from tinymlops.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    TinyMLOpsError,
    UsageError,
)

log = logging.getLogger("tinymlops.server")

#: most specific first
STATUS_BY_ERROR: tuple[tuple[type[TinyMLOpsError], int], ...] = (
    (PayloadTooLargeError, 413),
    (AuthenticationError, 401),
    (AccessDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 400),
    (UsageError, 400),
)
HTTP_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "AccessDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "PayloadTooLargeError",
    422: "ValidationError",
}
GENERIC_500 = "internal server error (the details are in the server log)"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting the error body for ``codes``."""
    return {code: {"model": ErrorBody, "description": HTTP_TYPES.get(code, "error")} for code in codes}


def status_for(exc: TinyMLOpsError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def error_json(
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """The one error body: ``{"error": {"type", "message", <details>}}`` (details never override the two)."""
    payload: dict[str, Any] = {"type": error_type, "message": message}
    for key, value in (details or {}).items():
        payload.setdefault(str(key), value)
    body = {"error": jsonable_encoder(payload, custom_encoder={bytes: bytes.hex})}
    return JSONResponse(body, status, dict(headers) if headers else None)


async def _tinymlops_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TinyMLOpsError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc.message)
        return error_json(500, "InternalError", GENERIC_500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_json(status, type(exc).__name__, exc.message, headers, exc.details)


def _location(loc: Any) -> str:
    return ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else str(loc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        ctx = bad_json[0].get("ctx") or {}
        loc = bad_json[0].get("loc") or ()
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return error_json(400, "MalformedJSONError", f"request body is not valid JSON: {ctx.get('error', '')}{where}")
    listed = [{"loc": _location(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")} for e in errors]
    content_type = request.headers.get("content-type", "")
    if any(e["loc"] == "body" for e in listed) and "json" not in content_type:
        shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        message = f"request body must be JSON sent with Content-Type: application/json (got {shown})"
        return error_json(422, "ValidationError", message, details={"errors": listed})
    summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in listed[:5]) + (" …" if len(listed) > 5 else "")
    message = f"request does not match the schema: {summary}"
    return error_json(422, "ValidationError", message, details={"errors": listed})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else HTTP_TYPES.get(status, "error")
    if status == 404 and message == "Not Found":
        message = f"no route {request.url.path}"
    if status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_json(status, HTTP_TYPES.get(status, "HTTPError"), message, exc.headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: database error", request.method, request.url.path, exc_info=exc)
    if isinstance(exc, OperationalError):
        return error_json(503, "ServiceUnavailableError", "the metadata database is unavailable or busy; retry later")
    return error_json(500, "InternalError", GENERIC_500)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: unexpected error", request.method, request.url.path, exc_info=exc)
    return error_json(500, "InternalError", GENERIC_500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TinyMLOpsError, _tinymlops_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


__all__ = ["ErrorBody", "error_responses", "install_error_handlers", "status_for"]
