"""The one place where any exception becomes the v1 error envelope: `as_clipfleet_error` names
the condition (a class in clipfleet/errors.py), `render` writes it. Middleware renders its
refusals through `render` too."""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from clipfleet.errors import (
    RETRY_AFTER_S,
    ClientClosedError,
    ClipfleetError,
    InvalidJsonError,
    InvalidRequestError,
    ModelServingError,
    RequestTimeoutError,
    ServiceUnavailableError,
    causes,
    error_for_status,
    find_clipfleet_error,
)

logger = logging.getLogger("ray.serve")
_STATUSES = {status.value for status in HTTPStatus}


def render(error: ClipfleetError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The envelope response for `error`, with the headers its condition calls for."""
    if error.status == 503 and not isinstance(error, ServiceUnavailableError):
        # Every 503 tells the client to retry, with Retry-After.
        error = ServiceUnavailableError(
            error.message, error.param, retry_after_s=error.retry_after_s
        )
    all_headers = {**(headers or {}), **error.headers()}
    return JSONResponse(status_code=error.status, content=error.envelope(), headers=all_headers)


def _validation_param(error: dict) -> str | None:
    param = ""
    for part in error.get("loc", ())[1:]:  # loc[0] is "body", "query", ...
        if isinstance(part, str) and part.startswith("~"):
            continue  # a union member's tag (clipfleet/api/schemas/rerank.py), not a field
        param += f"[{part}]" if isinstance(part, int) else f".{part}"
    return param.lstrip(".") or None


def _infrastructure_error(exc: BaseException) -> ClipfleetError | None:
    """Ray's back-pressure, dead-replica and timeout errors, wherever they sit in the chain:
    503 + Retry-After (the client should retry shortly) or 504."""
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    for cause in causes(exc):
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


# Starlette's and FastAPI's own refusals, in our words: their texts ("Missing boundary in
# multipart.", "There was an error parsing the body") name their internals, not the fix.
FRAMEWORK_MESSAGES = {
    400: "the request body could not be parsed: send JSON (Content-Type: application/json), "
    "or multipart/form-data for the */upload routes",
    404: "there is no such route; GET /docs lists them",
    405: "this route does not take that HTTP method; GET /docs shows the one it takes",
}
_BODY_NOT_AN_OBJECT = ("model_attributes_type", "dict_type", "model_type")


def _validation_error(first: dict) -> ClipfleetError:
    if first.get("type") == "json_invalid":
        return InvalidJsonError("the request body is not valid JSON")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in _BODY_NOT_AN_OBJECT:
        message = "the request body must be a JSON object (Content-Type: application/json)"
    else:  # pydantic's messages say what to fix; its "Value error, " prefix says nothing
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return InvalidRequestError(message, _validation_param(first), status=422)


def _framework_message(exc: StarletteHTTPException) -> str:
    """The body limit's 413 carries our text; the framework's own refusals get ours."""
    if exc.status_code == 413:
        return str(exc.detail)
    if exc.status_code in FRAMEWORK_MESSAGES:
        return FRAMEWORK_MESSAGES[exc.status_code]
    return HTTPStatus(exc.status_code).phrase if exc.status_code in _STATUSES else "refused"


def as_clipfleet_error(exc: BaseException, request_id: str | None) -> ClipfleetError:
    """The condition behind `exc`; anything unknown is logged and becomes a 500."""
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc.errors()[0] if exc.errors() else {})
    if any(isinstance(cause, ClientDisconnect) for cause in causes(exc)):
        # It hung up while sending its body (FastAPI wraps that in a 400).
        return ClientClosedError("the client closed the connection")
    if isinstance(exc, StarletteHTTPException):
        return error_for_status(exc.status_code, _framework_message(exc))
    error = find_clipfleet_error(exc) or _infrastructure_error(exc)
    if isinstance(error, ModelServingError):  # its replica logged the traceback
        logger.error("request %s: a model replica failed: %s", request_id, error.message)
    elif error is not None:
        return error
    else:
        logger.exception("unhandled error in request %s", request_id, exc_info=exc)
    return ClipfleetError(f"internal error; quote request id {request_id} to the operator")


def error_response(request: Request, exc: BaseException) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    headers = dict(exc.headers or {}) if isinstance(exc, StarletteHTTPException) else {}
    return render(as_clipfleet_error(exc, request_id), headers)


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, exc)
