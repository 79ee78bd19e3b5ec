"""The one error type every layer raises; the ingress turns it into the v1 error envelope.

These exceptions cross Ray process boundaries (a fetcher's error reaches the ingress wrapped
in a RayTaskError), so they pickle their own fields and `find_clipfleet_error` unwraps them.
"""

from __future__ import annotations


class ClipfleetError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = None  # OpenAI's `code` (e.g. model_not_found); null for most errors

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
        error = {"type": self.type, "message": self.message, "param": self.param}
        return {"error": {**error, "code": self.code}}


def _rebuild(cls, message, param, status, retry_after_s):
    return cls(message, param, status=status, retry_after_s=retry_after_s)


class InvalidRequestError(ClipfleetError):
    status = 400
    type = "invalid_request"


class InvalidImageError(ClipfleetError):
    status = 400
    type = "invalid_image"


class ForbiddenError(ClipfleetError):
    status = 403
    type = "forbidden"


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


class PayloadTooLargeError(ClipfleetError):
    status = 413
    type = "payload_too_large"


class UnsupportedMediaTypeError(ClipfleetError):
    status = 415
    type = "unsupported_media_type"


class UpstreamError(ClipfleetError):
    status = 502
    type = "upstream_error"


class UpstreamTimeoutError(ClipfleetError):
    status = 504
    type = "upstream_timeout"


class ServiceUnavailableError(ClipfleetError):
    status = 503
    type = "service_unavailable"


def find_clipfleet_error(exc: BaseException) -> ClipfleetError | None:
    """The ClipfleetError behind `exc`, looking through Ray's wrappers and exception chains."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        # Ray's RayTaskError subclasses the cause's type without its fields: look for the
        # instance that carries them.
        if isinstance(current, ClipfleetError) and "message" in vars(current):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None
