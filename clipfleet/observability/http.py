"""Per-request observability in the ingress: one ASGI middleware (the outermost) that

- binds the request id (Ray Serve's `X-Request-ID`) for spans and log lines;
- runs the app under OpenTelemetry's ASGI instrumentation when tracing is on (the request's
  server span, child of the client's W3C `traceparent` header if any), naming the span by route
  template and tagging it with the status, profile and variant;
- records clipfleet_requests / _request_errors / _request_seconds by route template, profile,
  variant and status (499 for a request whose client went away before its answer: Serve
  cancels it; never a 500);
- writes one structured log line per request (`extra` fields become JSON keys under Ray
  Serve's `logging_config: {encoding: JSON}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.errors import ClientClosedError
from clipfleet.observability import metrics, tracing

logger = logging.getLogger("ray.serve")

REQUEST_ID_HEADER = b"x-request-id"
PROFILE_HEADER = b"x-clipfleet-profile"
VARIANT_HEADER = b"x-clipfleet-variant"
UNMATCHED_ROUTE = "unmatched"  # 404s: arbitrary paths never become label values
_MAX_LABEL = 64


@dataclass
class Outcome:
    """What the response said, captured from `http.response.start`."""

    status: int = 500
    profile: str = metrics.NO_LABEL
    variant: str = metrics.NO_LABEL
    trace_id: str | None = None
    started: bool = False

    def capture(self, message: dict) -> None:
        self.started = True
        self.status = message["status"]
        headers = dict(message.get("headers") or ())
        self.profile = _label(headers.get(PROFILE_HEADER)) or self.profile
        self.variant = _label(headers.get(VARIANT_HEADER)) or self.variant


def _label(value: bytes | None) -> str:
    return value.decode("latin-1")[:_MAX_LABEL] if value else ""


def route_template(scope: dict) -> str:
    """The matched route's path template (`/v1/embed/image`), never the raw URL."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED_ROUTE


def request_id_of(scope: dict) -> str:
    headers = dict(scope.get("headers") or ())
    request_id = _label(headers.get(REQUEST_ID_HEADER))
    return request_id if request_id.isprintable() and request_id else uuid.uuid4().hex


class ObservabilityMiddleware(HttpMiddleware):
    async def handle(self, scope, receive, send) -> None:
        outcome = Outcome()

        async def send_observed(message: dict) -> None:
            if message["type"] == "http.response.start":
                outcome.capture(message)
                _finish_span(scope, outcome)  # routed by now: the route template is known
            await send(message)

        token = tracing.bind_request_id(request_id_of(scope))
        started = time.perf_counter()
        try:
            await tracing.asgi_app(self.app)(scope, receive, send_observed)
        except asyncio.CancelledError:
            if not outcome.started:  # Serve cancels a request whose client went away
                outcome.status = ClientClosedError.status
            raise
        finally:
            _observe(scope, outcome, time.perf_counter() - started)
            tracing.reset_request_id(token)


def _finish_span(scope: dict, outcome: Outcome) -> None:
    span = tracing.current_span()
    if span is None:
        return
    outcome.trace_id = tracing.trace_id_hex()
    route = route_template(scope)
    span.update_name(f"{scope['method']} {route}")
    span.set_attributes(
        {
            "http.route": route,
            "http.request.method": scope["method"],
            "http.response.status_code": outcome.status,
            "clipfleet.profile": outcome.profile,
            "clipfleet.variant": outcome.variant,
        }
    )


def _observe(scope: dict, outcome: Outcome, seconds: float) -> None:
    route = route_template(scope)
    metrics.record_request(
        route, scope["method"], outcome.profile, outcome.variant, outcome.status, seconds
    )
    extra = {
        "route": route,
        "method": scope["method"],
        "status": outcome.status,
        "profile": outcome.profile,
        "variant": outcome.variant,
        "latency_ms": round(seconds * 1000, 2),
        "request_id": tracing.current_request_id(),
    }
    if outcome.trace_id:
        extra["trace_id"] = outcome.trace_id
    logger.info(
        "%s %s %s %.1f ms", scope["method"], route, outcome.status, seconds * 1000, extra=extra
    )
