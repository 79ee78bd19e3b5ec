"""The one place where any exception becomes the v1 error envelope."""

from __future__ import annotations

import logging
import math

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipfleet.errors import ClipfleetError, ServiceUnavailableError, find_clipfleet_error

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1
_HTTP_TYPES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class RequestTimeoutError(ClipfleetError):
    status = 504
    type = "request_timeout"


def envelope(
    status: int,
    type_: str,
    message: str,
    param: str | None = None,
    headers=None,
    code: str | None = None,
):
    """`{"error": {"type", "message", "param", "code"}}`: clipfleet's `type` values, and
    OpenAI's `code` field (null unless a client can act on it, e.g. `model_not_found`)."""
    body = {"error": {"type": type_, "message": message, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _validation_param(error: dict) -> str | None:
    param = ""
    for part in error.get("loc", ())[1:]:  # loc[0] is "body", "query", ...
        param += f"[{part}]" if isinstance(part, int) else f".{part}"
    return param.lstrip(".") or None


def _causes(exc: BaseException):
    """`exc` and what it wraps: Ray's RayTaskError `cause`, `__cause__`, `__context__`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__


def _infrastructure_error(exc: BaseException) -> ClipfleetError | None:
    """Ray's back-pressure, dead-replica and timeout errors, wherever they sit in the chain:
    503 + Retry-After (the client should retry shortly) or 504."""
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    for cause in _causes(exc):
        if isinstance(cause, BackPressureError):
            retry = math.ceil(getattr(cause, "retry_after_s", None) or RETRY_AFTER_S)
            return ServiceUnavailableError(
                "the service is at capacity; retry shortly", retry_after_s=retry
            )
        if isinstance(cause, RayActorError | ActorUnavailableError | DeploymentUnavailableError):
            return ServiceUnavailableError("a model replica is unavailable; retry shortly")
        if isinstance(cause, TimeoutError | GetTimeoutError):
            return RequestTimeoutError("the request did not complete in time")
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
    error = find_clipfleet_error(exc) or _infrastructure_error(exc)
    if error is not None:
        headers = None
        if error.status == 503:
            headers = {"Retry-After": str(error.retry_after_s or RETRY_AFTER_S)}
            error = error if error.type == "service_unavailable" else _as_unavailable(error)
        return envelope(error.status, error.type, error.message, error.param, headers, error.code)
    logger.exception("unhandled error in request %s", request_id, exc_info=exc)
    return envelope(
        500, "internal_error", f"internal error; quote request id {request_id} to the operator"
    )


def _as_unavailable(error: ClipfleetError) -> ClipfleetError:
    return ServiceUnavailableError(error.message, error.param, retry_after_s=error.retry_after_s)


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, exc)
