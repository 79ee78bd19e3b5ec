"""The application's own metrics, through `ray.serve.metrics` (Ray's metrics endpoint and the
Ray dashboard), plus the single list of metric names the Grafana dashboard may query.

Ray exports each metric with a `ray_` prefix; counters gain `_total` and histograms
`_bucket` / `_sum` / `_count`. Inside a replica Ray adds `deployment`, `replica` and
`application` labels itself (those keys are reserved); our labels are all bounded sets: route
templates (never raw URLs), configured profiles and variants, HTTP status codes, stage names,
error types. Metrics are created lazily on first use, in the process that records them; outside
a Ray worker (unit tests) creation is guarded and recording then does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from clipfleet.errors import ClipfleetError, find_clipfleet_error

logger = logging.getLogger("ray.serve")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
NO_LABEL = "none"  # profile/variant of a request that never reached one (e.g. a 422)
STAGES = ("fetch", "decode", "preprocess", "encode", "score")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the name given to Ray; Prometheus sees `ray_<name>` (+ suffixes)
    kind: str  # counter | histogram | gauge
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported_names(self) -> tuple[str, ...]:
        base = f"ray_{self.name}"
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


_REQUEST_TAGS = ("route", "method", "profile", "variant", "status")
SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("clipfleet_requests", "counter", "HTTP requests answered", _REQUEST_TAGS),
    MetricSpec(
        "clipfleet_request_errors", "counter", "HTTP requests answered >= 400", _REQUEST_TAGS
    ),
    MetricSpec(
        "clipfleet_request_seconds",
        "histogram",
        "End-to-end request latency in the ingress",
        ("route", "profile", "variant"),
        LATENCY_BUCKETS_S,
    ),
    MetricSpec(
        "clipfleet_stage_seconds",
        "histogram",
        "Per-stage latency: fetch, decode, preprocess, encode (per batch), score",
        ("stage",),
        LATENCY_BUCKETS_S,
    ),
    MetricSpec(
        "clipfleet_batch_size",
        "histogram",
        "Observed batch size per encoder forward pass",
        ("kind",),
        BATCH_SIZE_BUCKETS,
    ),
    MetricSpec("clipfleet_image_bytes", "counter", "Image bytes received", ("source",)),
    MetricSpec(
        "clipfleet_image_pixels",
        "counter",
        "Image pixels decoded, as shipped to encoders",
        ("source",),
    ),
    MetricSpec(
        "clipfleet_fetch_failures", "counter", "Failed image fetches by reason", ("stage", "reason")
    ),
    MetricSpec("clipfleet_embedding_cache_hits", "counter", "Embedding cache hits", ("kind",)),
    MetricSpec("clipfleet_embedding_cache_misses", "counter", "Embedding cache misses", ("kind",)),
    MetricSpec(
        "clipfleet_shared_cache_results",
        "counter",
        "Shared (Valkey / Redis) embedding cache calls by result: hits, misses, errors, "
        "skipped (breaker open), write_errors",
        ("result", "kind"),
    ),
    MetricSpec(
        "clipfleet_affinity_routes",
        "counter",
        "Content-affinity routing decisions: owner (the key's replica) or fallback (owner busy)",
        ("result",),
    ),
    MetricSpec(
        "clipfleet_shared_cache_breaker_open",
        "gauge",
        "Shared embedding cache breaker: 0 closed, 0.5 half-open (one trial call), 1 open",
    ),
    MetricSpec(
        "clipfleet_canary_rollbacks",
        "counter",
        "Automatic canary rollbacks",
        ("profile", "variant"),
    ),
    MetricSpec(
        "clipfleet_traffic_weight",
        "gauge",
        "Effective traffic weight per variant (0 after a rollback)",
        ("profile", "variant"),
    ),
)
SPECS += (  # multiplexed profiles (clipfleet.models.catalog); model ids are never labels
    MetricSpec(
        "clipfleet_multiplexed_models",
        "counter",
        "Multiplexed model events per profile: load, load_failure, hit, eviction",
        ("profile", "event"),
    ),
    MetricSpec(
        "clipfleet_multiplexed_load_seconds",
        "histogram",
        "Time to load one multiplexed model",
        ("profile",),
        LATENCY_BUCKETS_S,
    ),
)
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}
EXPORTED_NAMES = frozenset(name for spec in SPECS for name in spec.exported_names)

# Ray Serve 2.60's own metrics that the dashboard uses, each seen on the metrics endpoint by
# tests/integration/test_observability.py (histograms as their _bucket/_sum/_count series).
RAY_SERVE_BUILTIN_NAMES = frozenset(
    {
        "ray_serve_num_http_requests_total",
        "ray_serve_num_http_error_requests_total",
        "ray_serve_http_request_latency_ms_bucket",
        "ray_serve_deployment_request_counter_total",
        "ray_serve_deployment_error_counter_total",
        "ray_serve_deployment_processing_latency_ms_bucket",
        "ray_serve_replica_processing_queries",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_actual_batch_size_bucket",
        "ray_serve_batch_wait_time_ms_bucket",
        "ray_serve_batch_execution_time_ms_bucket",
        "ray_serve_batch_utilization_percent_bucket",
        "ray_serve_deployment_queued_queries",
        "ray_serve_num_ongoing_requests_at_replicas",
        "ray_serve_autoscaling_target_replicas",
    }
)
DASHBOARD_NAMES = EXPORTED_NAMES | RAY_SERVE_BUILTIN_NAMES


@functools.cache
def _error_types() -> frozenset[str]:
    """Every ClipfleetError type: the bounded set of fetch failure reasons (+ `internal`)."""
    found, pending = set(), [ClipfleetError]
    while pending:
        cls = pending.pop()
        found.add(cls.type)
        pending.extend(cls.__subclasses__())
    return frozenset(found | {"internal"})


# -- creation ------------------------------------------------------------------------------
class _Noop:
    def inc(self, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None: ...
    def observe(self, value: float, tags: Mapping[str, str] | None = None) -> None: ...
    def set(self, value: float, tags: Mapping[str, str] | None = None) -> None: ...


def ray_backend(spec: MetricSpec) -> Any:
    """A ray.serve.metrics object; a no-op where Ray's metrics can't be created."""
    try:
        from ray.serve import metrics

        if spec.kind == "counter":
            return metrics.Counter(spec.name, spec.description, spec.tag_keys)
        if spec.kind == "histogram":
            return metrics.Histogram(
                spec.name, spec.description, list(spec.boundaries), spec.tag_keys
            )
        return metrics.Gauge(spec.name, spec.description, spec.tag_keys)
    except Exception:
        logger.warning("metric %s is disabled: Ray metrics unavailable here", spec.name)
        return _Noop()


_backend = ray_backend
_created: dict[str, Any] = {}


def use_backend(factory) -> None:
    """Swap the metric factory (tests record into memory); drops metrics created so far."""
    global _backend
    _backend = factory
    _created.clear()


_creating = threading.Lock()  # sync deployment methods record from Serve's thread pool


def _metric(name: str) -> Any:
    metric = _created.get(name)
    if metric is None:
        with _creating:
            metric = _created.get(name)
            if metric is None:
                metric = _created[name] = _backend(SPECS_BY_NAME[name])
    return metric


def _safely(record, *args, **kwargs) -> None:
    """Metrics never fail a request: a recording error is logged and dropped."""
    try:
        record(*args, **kwargs)
    except Exception:
        logger.exception("metric recording failed")


# -- recording -----------------------------------------------------------------------------
def record_request(
    route: str, method: str, profile: str, variant: str, status: int, seconds: float
) -> None:
    tags = {
        "route": route,
        "method": method,
        "profile": profile,
        "variant": variant,
        "status": str(status),
    }
    _safely(_metric("clipfleet_requests").inc, 1, tags)
    if status >= 400:
        _safely(_metric("clipfleet_request_errors").inc, 1, tags)
    latency_tags = {"route": route, "profile": profile, "variant": variant}
    _safely(_metric("clipfleet_request_seconds").observe, seconds, latency_tags)


def record_stage(stage: str, seconds: float) -> None:
    _safely(_metric("clipfleet_stage_seconds").observe, seconds, {"stage": stage})


@contextlib.contextmanager
def timed_stage(stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        record_stage(stage, time.perf_counter() - started)


def record_batch(kind: str, size: int) -> None:
    _safely(_metric("clipfleet_batch_size").observe, size, {"kind": kind})


def record_image(source: str, nbytes: int, pixels: int) -> None:
    for name, value in (("clipfleet_image_bytes", nbytes), ("clipfleet_image_pixels", pixels)):
        if value > 0:
            _safely(_metric(name).inc, value, {"source": source})


def failure_reason(exc: BaseException) -> str:
    error = find_clipfleet_error(exc)
    reason = error.type if error is not None else "internal"
    return reason if reason in _error_types() else "internal"


def record_fetch_failure(stage: str, exc: BaseException) -> None:
    tags = {"stage": stage, "reason": failure_reason(exc)}
    _safely(_metric("clipfleet_fetch_failures").inc, 1, tags)


@contextlib.contextmanager
def counting_failures(stage: str) -> Iterator[None]:
    """Count an exception leaving the block as a fetch failure of `stage`, then re-raise."""
    try:
        yield
    except Exception as exc:
        record_fetch_failure(stage, exc)
        raise


def record_cache(hit: bool, kind: str) -> None:
    """The embedding cache's first level (per replica): call once per lookup."""
    name = "clipfleet_embedding_cache_hits" if hit else "clipfleet_embedding_cache_misses"
    _safely(_metric(name).inc, 1, {"kind": kind})


def record_shared_cache(result: str, kind: str) -> None:
    """One shared-cache call's result (clipfleet.replicas.shared_cache)."""
    tags = {"result": result, "kind": kind}
    _safely(_metric("clipfleet_shared_cache_results").inc, 1, tags)


def record_affinity(result: str) -> None:
    """One content-affinity routing decision (clipfleet.ingress.affinity_router), in the caller."""
    _safely(_metric("clipfleet_affinity_routes").inc, 1, {"result": result})


BREAKER_LEVELS = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


def record_shared_cache_breaker(state: str) -> None:
    _safely(_metric("clipfleet_shared_cache_breaker_open").set, BREAKER_LEVELS[state], {})


def record_traffic(status: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Effective weights, from {profile: TrafficManager.status(profile)}."""
    for profile, variants in status.items():
        for variant, state in variants.items():
            tags = {"profile": profile, "variant": variant}
            _safely(_metric("clipfleet_traffic_weight").set, float(state["weight"]), tags)


def record_rollback(profile: str, variant: str, reason: str) -> None:
    """A ClipfleetService rollback listener. The reason is free text: logged, never a label."""
    del reason
    tags = {"profile": profile, "variant": variant}
    _safely(_metric("clipfleet_canary_rollbacks").inc, 1, tags)
    _safely(_metric("clipfleet_traffic_weight").set, 0.0, tags)


def record_multiplexed(event: str, profile: str, load_seconds: float | None = None) -> None:
    """A multiplexed model event (load, load_failure, hit, eviction, idle_unload)."""
    tags = {"profile": profile, "event": event}
    _safely(_metric("clipfleet_multiplexed_models").inc, 1, tags)
    if load_seconds is not None:
        _safely(
            _metric("clipfleet_multiplexed_load_seconds").observe,
            load_seconds,
            {"profile": profile},
        )
