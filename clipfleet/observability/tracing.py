"""OpenTelemetry spans across the deployment graph, off by default.

`CLIPFLEET_TRACING` picks the exporter, per process (set it in each deployment's
`runtime_env.env_vars`, or in the environment `serve run` / `ray start` inherit):

- `off` (default): no tracer at all; `span()` returns a shared null context and handles are
  not wrapped, so calls are exactly as without tracing.
- `console`: spans printed to stdout (the replica's log file).
- `otlp`: OTLP over gRPC (the `OTEL_EXPORTER_OTLP_*` variables configure it); needs
  `opentelemetry-exporter-otlp` installed, otherwise tracing stays off with a warning.
- `file`: one JSON object per span appended to `CLIPFLEET_TRACING_FILE`.

The ingress's request span is OpenTelemetry's ASGI instrumentation (`asgi_app`), which makes a
client's own `traceparent` header its parent; the image fetcher's HTTP client spans are its
aiohttp-client instrumentation (`http_client_traces`, on the fetcher's session only).
Deployments are separate processes, so the context crosses each handle call explicitly: the
ingress wraps its handles in `TracedHandle`, which adds a W3C `traceparent` keyword argument,
and each deployment method decorated with `@traced(...)` starts its span under it. (Ray Serve
2.60 propagates context across handle calls only while its own Serve-wide tracing is on, proxy
included; see docs/observability.md.) Every span carries the request id
(`clipfleet.request_id`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from clipfleet.ingress.keyword_handles import KeywordHandle, wrap_handles

logger = logging.getLogger("ray.serve")

TRACING_ENV = "CLIPFLEET_TRACING"
TRACING_FILE_ENV = "CLIPFLEET_TRACING_FILE"
SAMPLE_RATIO_ENV = "CLIPFLEET_TRACING_SAMPLE_RATIO"
MODES = ("off", "console", "otlp", "file")
REQUEST_ID_ATTRIBUTE = "clipfleet.request_id"
# The deployment methods that accept `traceparent=` (decorated with @traced): TracedHandle adds
# it to calls of these only, so every other method (describe, ...) is called as before.
TRACED_METHODS = frozenset(
    {
        "fetch",
        "embed_image",
        "embed_images",
        "embed_pair",
        "embed_text",
        "embed_texts",
        "score_pair",
        "tag",
    }
)
TRACEPARENT = "traceparent"

_NULL = contextlib.nullcontext()
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "clipfleet_request_id", default=""
)
_tracer: Any = None
_configured = False
_provider: Any = None


# -- request id ----------------------------------------------------------------------------
def bind_request_id(request_id: str) -> contextvars.Token:
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token) -> None:
    _request_id.reset(token)


def current_request_id() -> str:
    """The ingress's own request id, else Ray Serve's (propagated through handle calls)."""
    request_id = _request_id.get()
    if request_id:
        return request_id
    with contextlib.suppress(Exception):
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id
    return ""


# -- set-up --------------------------------------------------------------------------------
def configure(mode: str | None = None, exporter: Any = None) -> bool:
    """(Re)build this process's tracer; returns whether tracing is on.

    `mode` defaults to $CLIPFLEET_TRACING; `exporter` (e.g. an InMemorySpanExporter) overrides
    the mode's exporter and turns tracing on.
    """
    global _tracer, _configured, _provider
    _configured = True
    if _provider is not None:
        _provider.shutdown()  # flushes what the previous set-up still holds
        _provider = None
    mode = (mode or os.environ.get(TRACING_ENV, "off")).strip().lower()
    if exporter is None and mode not in MODES:
        logger.warning("%s=%s is not one of %s; tracing is off", TRACING_ENV, mode, MODES)
    processor = _processor(exporter, batch=False) if exporter is not None else _mode_processor(mode)
    if processor is None:
        _tracer = None
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = float(os.environ.get(SAMPLE_RATIO_ENV, "1.0"))
    provider = TracerProvider(
        resource=Resource.create({"service.name": "clipfleet", **_serve_attributes()}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer("clipfleet")
    return True


def _processor(exporter: Any, batch: bool = True) -> Any:
    # Batched: spans are written by the processor's own thread, never on the event loop. An
    # exporter handed in (tests' in-memory one) gets each span at once instead.
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    return BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)


def _mode_processor(mode: str) -> Any:
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return _processor(ConsoleSpanExporter())
    if mode == "file":
        return _processor(JsonLinesSpanExporter(os.environ[TRACING_FILE_ENV]))
    if mode == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            logger.warning("%s=otlp needs opentelemetry-exporter-otlp; tracing is off", TRACING_ENV)
            return None
        return _processor(OTLPSpanExporter())
    return None


def _serve_attributes() -> dict[str, str]:
    with contextlib.suppress(Exception):
        from ray.serve.context import _get_internal_replica_context

        context = _get_internal_replica_context()
        if context is not None:
            return {"serve.application": context.app_name, "serve.deployment": context.deployment}
    return {}


def tracer() -> Any:
    """This process's tracer, or None when tracing is off (configured from env on first use)."""
    if not _configured:
        configure()
    return _tracer


def enabled() -> bool:
    return tracer() is not None


# -- spans ---------------------------------------------------------------------------------
def span(name: str, traceparent: str | None = None, server: bool = False, **attributes: Any):
    """A context manager yielding the started span (None, at no cost, when tracing is off).

    The parent is `traceparent` when given, else the current span."""
    active = tracer()
    if active is None:
        return _NULL
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = None
    if traceparent:
        parent = TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent})
    attributes[REQUEST_ID_ATTRIBUTE] = current_request_id()
    kind = SpanKind.SERVER if server else SpanKind.INTERNAL
    return active.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def current_span() -> Any:
    """The span open in this context, or None (tracing off, or no span open)."""
    if tracer() is None:
        return None
    from opentelemetry import trace

    active = trace.get_current_span()
    return active if active.is_recording() else None


def asgi_app(app: Any) -> Any:
    """`app` inside OpenTelemetry's ASGI middleware while tracing is on (one server span per
    request, child of the client's `traceparent`); `app` itself when it is off."""
    if tracer() is None:
        return app
    return _instrumented(app, _provider)


@functools.lru_cache(maxsize=8)
def _instrumented(app: Any, provider: Any) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        app,
        tracer_provider=provider,
        server_request_hook=_tag_request,
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )


def _tag_request(span: Any, request: Any) -> None:
    """The instrumentations' request hook (`request`: the ASGI scope, or aiohttp's params)."""
    if span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, current_request_id())


def http_client_traces() -> list:
    """`trace_configs=` for an aiohttp ClientSession: while tracing is on, OpenTelemetry's
    aiohttp-client instrumentation (one CLIENT span per HTTP request, child of the current span;
    the URL without its query), sending no trace context to the server; none when it is off."""
    if tracer() is None:
        return []
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config
    from opentelemetry.metrics import NoOpMeterProvider

    config = create_trace_config(
        url_filter=_without_query,
        request_hook=_tag_request,
        tracer_provider=_provider,
        meter_provider=NoOpMeterProvider(),  # clipfleet's own fetch metrics time these
        sem_conv_opt_in_mode=_http_semconv_mode(),
    )
    # The instrumentation always injects the context into the request's headers (there is no
    # switch), but image URLs name arbitrary third-party hosts: our trace ids are not theirs to
    # see. This runs after its injection, before the request is built.
    config.on_request_start.append(_strip_trace_context)
    return [config]


def _without_query(url: Any) -> str:
    # Signed image URLs carry their credentials in the query.
    return str(url.with_query(None).with_fragment(None))


async def _strip_trace_context(session: Any, context: Any, params: Any) -> None:
    from opentelemetry import propagate

    for field in propagate.get_global_textmap().fields:
        params.headers.popall(field, None)


def _http_semconv_mode() -> Any:
    """The HTTP attribute names $OTEL_SEMCONV_STABILITY_OPT_IN picks, as the ASGI
    instrumentation reads them (and AioHttpClientInstrumentor would)."""
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability as Stability,
    )
    from opentelemetry.instrumentation._semconv import _OpenTelemetryStabilitySignalType

    Stability._initialize()
    return Stability._get_opentelemetry_stability_opt_in_mode(
        _OpenTelemetryStabilitySignalType.HTTP
    )


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to send along with a handle call."""
    if tracer() is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def trace_id_hex() -> str | None:
    """The current trace id (32 hex digits), for log lines; None without a recording span."""
    if tracer() is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def traced(name: str) -> Callable[[Callable], Callable]:
    """Decorate a deployment method: it accepts an optional `traceparent=` keyword and runs in
    a server span under it. Callers that pass no traceparent are unaffected."""

    def decorate(function: Callable) -> Callable:
        if function.__name__ not in TRACED_METHODS:
            raise ValueError(f"add {function.__name__!r} to TRACED_METHODS so handles pass it on")
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args, traceparent: str | None = None, **kwargs):
                with span(name, traceparent, server=True):
                    return await function(*args, **kwargs)

            return run_async

        @functools.wraps(function)
        def run(*args, traceparent: str | None = None, **kwargs):
            with span(name, traceparent, server=True):
                return function(*args, **kwargs)

        return run

    return decorate


# -- handles -------------------------------------------------------------------------------
def _trace_keywords() -> dict[str, str]:
    traceparent = current_traceparent()
    return {TRACEPARENT: traceparent} if traceparent else {}


class TracedHandle(KeywordHandle):
    """A handle whose `.method.remote(...)` calls carry the current span's traceparent."""

    def __init__(self, handle: Any, methods=TRACED_METHODS, keywords=_trace_keywords) -> None:
        super().__init__(handle, methods, keywords)


def trace_handles(handles: Any) -> Any:
    """Wrap a handle, or the handles in nested dicts and lists, in TracedHandle when tracing is
    on; returns them unchanged when it is off."""
    return wrap_handles(handles, TracedHandle) if enabled() else handles


# -- file exporter -------------------------------------------------------------------------
class JsonLinesSpanExporter:
    """A SpanExporter appending one JSON object per span to a file (several processes may
    share it: each line is written with one append)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(span_record(item)) + "\n" for item in spans)
        with self._lock, open(self._path, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(item: Any) -> dict[str, Any]:
    """A finished span as plain JSON: ids in hex, attributes, resource, pid."""
    parent = item.parent
    return {
        "name": item.name,
        "trace_id": f"{item.context.trace_id:032x}",
        "span_id": f"{item.context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "kind": item.kind.name,
        "status": item.status.status_code.name,
        "attributes": dict(item.attributes or {}),
        "resource": dict(item.resource.attributes),
        "pid": os.getpid(),
        "start_ns": item.start_time,
        "end_ns": item.end_time,
    }
