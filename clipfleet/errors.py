"""Every error a client can see: one class per condition (its HTTP status and envelope `type`),
the envelope they render to, and the one walk through wrapped exceptions.

These exceptions cross Ray process boundaries (a fetcher's error reaches the ingress wrapped
in a RayTaskError), so they pickle their own fields and `find_clipfleet_error` unwraps them.
`clipfleet/api/errors.py` turns any exception into one of them and renders it.
"""

from __future__ import annotations

from collections.abc import Iterator

RETRY_AFTER_S = 1  # the Retry-After of a 503 that names no better time


class ClipfleetError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None  # OpenAI's `code` (e.g. model_not_found); null for most errors
    # Whether the canary guard blames the variant that served the request: only for failures
    # a variant's own replica raised while serving (marked where they happen, in
    # clipfleet/replicas/serving.py); never for what a client, an upstream or the clock did.
    variant_fault: bool = False

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.param, self.status, self.retry_after_s))

    def at_param(self, param: str) -> ClipfleetError:
        """The same error, pointing at the request field (e.g. `images[3]`) that caused it."""
        return _rebuild(type(self), self.message, param, self.status, self.retry_after_s)

    def envelope(self) -> dict:
        """`{"error": {"type", "message", "param", "code"}}`: clipfleet's `type` values, and
        OpenAI's `code` field (null unless a client can act on it, e.g. `model_not_found`)."""
        error = {"type": self.type, "message": self.message, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Response headers the condition calls for (Retry-After, WWW-Authenticate)."""
        return {}


def _rebuild(cls, message, param, status, retry_after_s):
    return cls(message, param, status=status, retry_after_s=retry_after_s)


class InvalidRequestError(ClipfleetError):
    status = 400
    type = "invalid_request"


class InvalidImageError(ClipfleetError):
    status = 400
    type = "invalid_image"


class InvalidUrlError(ClipfleetError):
    """An image url that is not a well-formed http(s) url (scheme, host syntax, IDNA, port),
    refused before any lookup or connection."""

    status = 400
    type = "invalid_url"


class InvalidJsonError(ClipfleetError):
    status = 400
    type = "invalid_json"


class UnauthorizedError(ClipfleetError):
    """No API key was sent."""

    status = 401
    type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ClipfleetError):
    """A request for something this client may not have: a wrong API key, a model or local
    file outside what is allowed."""

    status = 403
    type = "forbidden"


class ForbiddenUrlError(ClipfleetError):
    """The URL points at an address the fetcher must not reach (SSRF guard)."""

    status = 403
    type = "forbidden_url"


class ClientClosedError(ClipfleetError):
    """The client went away before its answer (nginx's 499): logged and counted as such,
    never as a server error, and sent to no one."""

    status = 499
    type = "client_closed_request"


class ModelServingError(ClipfleetError):
    """A model replica failed while serving (preprocessing, forward): the failure a variant is
    blamed for. Raised where it happens, with the original's class in the message for the
    logs; clients see a generic 500 quoting their request id."""

    status = 500
    type = "internal_error"
    variant_fault = True


class ModelLoadFailedError(ClipfleetError):
    """One multiplexed model could not be loaded; the replica and its other models are fine."""

    status = 500
    type = "model_load_failed"


class NotFoundError(ClipfleetError):
    status = 404
    type = "not_found"


class ModelNotFoundError(NotFoundError):
    """An unknown `model` (profile, variant or model id): OpenAI's 404 `model_not_found`."""

    type = "model_not_found"
    code = "model_not_found"


class MethodNotAllowedError(ClipfleetError):
    status = 405
    type = "method_not_allowed"


class PayloadTooLargeError(ClipfleetError):
    """Over a size limit: the body, an image (bytes or pixels), or the items in a request."""

    status = 413
    type = "payload_too_large"


class UnsupportedMediaTypeError(ClipfleetError):
    status = 415
    type = "unsupported_media_type"


class UpstreamError(ClipfleetError):
    status = 502
    type = "upstream_error"


class UpstreamTimeoutError(ClipfleetError):
    """An image URL did not answer within `fetch.timeout_s` (the upstream's fault)."""

    status = 504
    type = "upstream_timeout"


class RequestTimeoutError(ClipfleetError):
    """The request itself ran past its deadline (`limits.request_timeout_s`, or a handle call
    timing out): this service's fault."""

    status = 504
    type = "request_timeout"


class ServiceUnavailableError(ClipfleetError):
    """Retry shortly: always with Retry-After."""

    status = 503
    type = "service_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s or RETRY_AFTER_S)}


class ReplicaStalledError(ServiceUnavailableError):
    """A model replica's forward ran past its `stall_limit_s`: it fails Serve's health check
    and is being replaced. The ingress sends the call once more; if that fails too, the client
    gets this 503 + Retry-After. It is the variant's fault."""

    variant_fault = True


class HttpError(ClipfleetError):
    """A status Starlette raised that no class above names."""

    type = "http_error"


_BY_STATUS: dict[int, type[ClipfleetError]] = {
    cls.status: cls
    for cls in (
        InvalidRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        MethodNotAllowedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        ServiceUnavailableError,
    )
}


def error_for_status(status: int, message: str) -> ClipfleetError:
    """The error for an HTTP status raised without one of ours (Starlette's HTTPException)."""
    cls = _BY_STATUS.get(status, HttpError)
    return cls(message, status=None if cls is not HttpError else status)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: Ray's RayTaskError `cause`, `__cause__`, `__context__`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__


def is_variant_fault(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the variant's own replica while serving (a positive mark
    set at its origin); anything else, whatever its class, is not."""
    error = find_clipfleet_error(exc)
    return error is not None and error.variant_fault


def find_clipfleet_error(exc: BaseException) -> ClipfleetError | None:
    """The ClipfleetError behind `exc`, looking through Ray's wrappers and exception chains."""
    for current in causes(exc):
        # Ray's RayTaskError subclasses the cause's type without its fields: look for the
        # instance that carries them.
        if isinstance(current, ClipfleetError) and "message" in vars(current):
            return current
    return None
