"""The one place where any exception becomes the v1 error envelope."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipfleet.errors import ClipfleetError, find_clipfleet_error

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def envelope(status: int, type_: str, message: str, param: str | None = None, headers=None):
    body = {"error": {"type": type_, "message": message, "param": param}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _validation_param(error: dict) -> str | None:
    param = ""
    for part in error.get("loc", ())[1:]:  # loc[0] is "body", "query", ...
        param += f"[{part}]" if isinstance(part, int) else f".{part}"
    return param.lstrip(".") or None


def _overload_or_unavailable(exc: BaseException) -> ClipfleetError | None:
    """Ray's own back-pressure and dead-replica errors: the client should retry shortly."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError):
        return ClipfleetError("the service is at capacity; retry shortly", status=503)
    if isinstance(exc, RayActorError | ActorUnavailableError):
        return ClipfleetError("a model replica is unavailable; retry shortly", status=503)
    return None


def error_response(request: Request, exc: BaseException) -> JSONResponse:
    response = _error_response(request, exc)
    served = getattr(exc, "clipfleet_served", None)
    if served is not None:
        response.headers["X-Clipfleet-Profile"], response.headers["X-Clipfleet-Variant"] = served
    return response


def _error_response(request: Request, exc: BaseException) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return envelope(400, "invalid_json", "the request body is not valid JSON")
        message = str(first.get("msg", "invalid request"))
        return envelope(422, "invalid_request", message, _validation_param(first))
    if isinstance(exc, StarletteHTTPException):
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        return envelope(exc.status_code, type_, str(exc.detail), None, exc.headers)
    error = find_clipfleet_error(exc) or _overload_or_unavailable(exc)
    if error is not None:
        headers = None
        if error.status == 503:
            headers = {"Retry-After": str(error.retry_after_s or RETRY_AFTER_S)}
            error = error if error.type == "service_unavailable" else _as_unavailable(error)
        return envelope(error.status, error.type, error.message, error.param, headers)
    logger.exception("unhandled error in request %s", request_id, exc_info=exc)
    return envelope(
        500, "internal_error", f"internal error; quote request id {request_id} to the operator"
    )


def _as_unavailable(error: ClipfleetError) -> ClipfleetError:
    from clipfleet.errors import ServiceUnavailableError

    return ServiceUnavailableError(error.message, error.param, retry_after_s=error.retry_after_s)


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, exc)
