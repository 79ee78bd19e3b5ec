"""Metrics labels, tracing over the Ray-free local DAG, /v1/status, and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from clipfleet.errors import UpstreamError, UpstreamTimeoutError
from clipfleet.ingress.service import ClipfleetService
from clipfleet.observability import metrics, tracing
from tests.support import local_dag
from tests.support.handles import LocalHandle
from tests.support.images import LoopbackServer, image_base64, image_bytes
from tests.support.servers import ThreadedImageServer

DASHBOARD = Path(__file__).parents[3] / "cluster" / "grafana" / "clipfleet.json"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Recorder:
    """A metrics backend that keeps every record in memory: {name: [(op, value, tags)]}."""

    def __init__(self) -> None:
        self.records: dict[str, list] = defaultdict(list)

    def __call__(self, spec: metrics.MetricSpec):
        recorder = self

        class Metric:
            def _keep(self, op, value, tags):
                assert set(tags) == set(spec.tag_keys), (spec.name, tags)
                recorder.records[spec.name].append((op, value, dict(tags)))

            def inc(self, value=1.0, tags=None):
                self._keep("inc", value, tags)

            def observe(self, value, tags=None):
                self._keep("observe", value, tags)

            def set(self, value, tags=None):
                self._keep("set", value, tags)

        return Metric()


@pytest.fixture
def recorder():
    recorder = Recorder()
    metrics.use_backend(recorder)
    yield recorder
    metrics.use_backend(metrics.ray_backend)


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    yield exporter
    tracing.configure("off")


# -- metrics -------------------------------------------------------------------------------
def test_request_metrics_use_route_templates_and_bounded_labels(client, recorder):
    assert client.post("/v1/embed/text", json={"texts": ["a cat"]}).status_code == 200
    assert client.post("/v1/embed/text", json={"texts": ["a"], "profile": "nope"}).status_code
    assert client.get("/no/such/path/12345").status_code == 404
    requests = [tags for _, _, tags in recorder.records["clipfleet_requests"]]
    assert requests[0] == {
        "route": "/v1/embed/text",
        "method": "POST",
        "profile": "fast",
        "variant": "stable",
        "status": "200",
    }
    assert requests[1]["status"] == "422" and requests[1]["profile"] == metrics.NO_LABEL
    assert requests[2]["route"] == "unmatched"  # raw paths never become label values
    errors = [tags["status"] for _, _, tags in recorder.records["clipfleet_request_errors"]]
    assert errors == ["422", "404"]
    latencies = recorder.records["clipfleet_request_seconds"]
    assert len(latencies) == 3 and all(0 < value < 60 for _, value, _ in latencies)


def test_fetch_failure_reasons_are_a_bounded_set():
    assert metrics.failure_reason(UpstreamError("HTTP 500")) == "upstream_error"
    assert metrics.failure_reason(UpstreamTimeoutError("slow")) == "upstream_timeout"
    assert metrics.failure_reason(RuntimeError("anything at all")) == "internal"


def test_rollback_listener_counts_by_profile_and_variant_not_reason(recorder):
    metrics.record_rollback("fast", "canary", "error ratio 50.0% vs stable 0.0% over 20 requests")
    assert recorder.records["clipfleet_canary_rollbacks"] == [
        ("inc", 1, {"profile": "fast", "variant": "canary"})
    ]
    assert recorder.records["clipfleet_traffic_weight"][-1][1] == 0.0


def test_stage_batch_image_and_cache_recorders(recorder):
    with metrics.timed_stage("encode"):
        pass
    with pytest.raises(UpstreamError), metrics.counting_failures("fetch"):
        raise UpstreamError("HTTP 404")
    metrics.record_batch("image", 8)
    metrics.record_image("url", 1000, 64 * 48)
    metrics.record_cache(True, "image")
    records = recorder.records
    assert records["clipfleet_stage_seconds"][0][2] == {"stage": "encode"}
    assert records["clipfleet_fetch_failures"][0][2] == {
        "stage": "fetch",
        "reason": "upstream_error",
    }
    assert records["clipfleet_batch_size"] == [("observe", 8, {"kind": "image"})]
    assert records["clipfleet_image_pixels"] == [("inc", 3072, {"source": "url"})]
    assert records["clipfleet_embedding_cache_hits"] == [("inc", 1, {"kind": "image"})]


def test_ray_metrics_are_safe_outside_a_ray_worker():
    metrics.use_backend(metrics.ray_backend)
    metrics.record_request("/v1/score", "POST", "fast", "stable", 200, 0.1)
    metrics.record_fetch_failure("decode", ValueError("bad"))
    metrics.record_traffic({"fast": {"stable": {"weight": 100.0}}})


def test_exported_names_follow_rays_prometheus_naming():
    assert "ray_clipfleet_requests_total" in metrics.EXPORTED_NAMES
    assert "ray_clipfleet_embedding_cache_hits_total" in metrics.EXPORTED_NAMES
    assert {"ray_clipfleet_request_seconds_bucket", "ray_clipfleet_traffic_weight"} <= (
        metrics.EXPORTED_NAMES
    )


# -- tracing -------------------------------------------------------------------------------
def traced_service(args) -> ClipfleetService:
    """The local graph with its handles traced as the ingress's are (tracing.TracedHandle)."""
    return local_dag.build_local_service(
        args, handle=lambda target: tracing.TracedHandle(LocalHandle(target))
    )


def test_one_request_yields_one_connected_trace(tiny_args, spans, client_for):
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "X-Request-ID": "req-42"}
    body = {"pairs": [{"image": {"base64": image_base64()}, "text": "a cat"}]}
    client = client_for(traced_service(tiny_args))
    response = client.post("/v1/score", json=body, headers=headers)
    ready = client.get("/readyz")  # describe() is called without a traceparent
    assert ready.status_code == 200, ready.text
    assert response.status_code == 200, response.text
    trace_id = int(CLIENT_TRACE, 16)
    finished = [span for span in spans.get_finished_spans() if span.context.trace_id == trace_id]
    names = sorted(span.name for span in finished)
    # an inline (base64) image goes straight to the encoder (no fetch span), with its text
    assert names == ["POST /v1/score", "Scorer.score_pair", "encoder.embed_pair"]
    (root,) = [span for span in finished if span.name == "POST /v1/score"]
    assert root.parent.span_id == int(CLIENT_SPAN, 16) and root.parent.is_remote
    assert root.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert {span.parent.span_id for span in finished if span is not root} == {root.context.span_id}
    assert {span.attributes[tracing.REQUEST_ID_ATTRIBUTE] for span in finished} == {"req-42"}
    assert root.attributes["http.route"] == "/v1/score"
    assert root.attributes["clipfleet.variant"] == "stable"


class HopServer(LoopbackServer):
    """/hop redirects to /img.jpg (a signed-looking query on both); keeps each request's
    headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []

    def build_app(self):
        from aiohttp import web

        async def hop(request):
            self.headers.append(dict(request.headers))
            raise web.HTTPFound("/img.jpg?sig=secret")

        async def image(request):
            self.headers.append(dict(request.headers))
            return web.Response(body=image_bytes(), content_type="image/jpeg")

        app = web.Application()
        app.router.add_get("/hop", hop)
        app.router.add_get("/img.jpg", image)
        return app


def _http_attribute(span, stable: str, old: str):
    # $OTEL_SEMCONV_STABILITY_OPT_IN picks the stable names, the old ones, or both.
    return span.attributes.get(stable, span.attributes.get(old))


def test_image_url_fetches_are_client_spans_inside_the_request_trace(tiny_args, spans, client_for):
    hop = HopServer()
    server = ThreadedImageServer(hop).start()
    try:
        pair = {"image": {"url": f"{server.base_url}/hop?sig=secret"}, "text": "a cat"}
        headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "X-Request-ID": "req-7"}
        client = client_for(traced_service(tiny_args))
        response = client.post("/v1/score", json={"pairs": [pair]}, headers=headers)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    trace_id = int(CLIENT_TRACE, 16)
    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    (fetch,) = [span for span in finished if span.name == "ImageFetcher.fetch"]
    hops = [span for span in finished if span.kind is SpanKind.CLIENT]
    assert [span.name for span in hops] == ["GET", "GET"]  # the redirect and its target
    assert {span.parent.span_id for span in hops} == {fetch.context.span_id}
    assert {span.instrumentation_scope.name for span in hops} == {
        "opentelemetry.instrumentation.aiohttp_client"
    }
    assert [_http_attribute(s, "http.request.method", "http.method") for s in hops] == ["GET"] * 2
    statuses = [_http_attribute(s, "http.response.status_code", "http.status_code") for s in hops]
    assert statuses == [302, 200]
    urls = [_http_attribute(s, "url.full", "http.url") for s in hops]
    assert urls == [f"{server.base_url}/hop", f"{server.base_url}/img.jpg"]  # no query
    assert {span.attributes[tracing.REQUEST_ID_ATTRIBUTE] for span in hops} == {"req-7"}
    # The image host never sees our trace context.
    assert len(hop.headers) == 2
    for sent in hop.headers:
        assert not {"traceparent", "tracestate", "baggage"} & {k.lower() for k in sent}


def test_tracing_off_costs_nothing():
    tracing.configure("off")
    handles = {"fast": {"stable": object()}}
    assert tracing.trace_handles(handles) is handles  # handles are not even wrapped
    app = object()
    assert tracing.asgi_app(app) is app  # nor is the ingress's ASGI app
    assert tracing.http_client_traces() == []  # nor the fetcher's aiohttp session
    assert tracing.span("anything") is tracing.span("else")  # one shared null context
    assert tracing.current_traceparent() is None and tracing.trace_id_hex() is None


def test_unknown_mode_or_missing_otlp_exporter_leaves_tracing_off(monkeypatch):
    assert tracing.configure("bogus") is False
    # As if opentelemetry-exporter-otlp were not installed (a user may well have it).
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    assert tracing.configure("otlp") is False


def test_file_exporter_writes_json_lines(tmp_path, monkeypatch):
    path = tmp_path / "spans.jsonl"
    monkeypatch.setenv(tracing.TRACING_FILE_ENV, str(path))
    assert tracing.configure("file")
    try:
        with tracing.span("outer"), tracing.span("inner"):
            pass
    finally:
        tracing.configure("off")
    inner, outer = (json.loads(line) for line in path.read_text().splitlines())
    assert inner["parent_span_id"] == outer["span_id"] and outer["parent_span_id"] is None
    assert inner["trace_id"] == outer["trace_id"]


# -- status --------------------------------------------------------------------------------
def test_status_over_the_local_dag(client):
    response = client.get("/v1/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deployments"] is None  # no Serve controller outside Ray
    assert set(body["encoders"]) == {"clip_fast", "clip_accurate", "resnet_resnet18"}
    resnet = body["encoders"]["resnet_resnet18"]
    assert resnet["profiles"] == ["fast", "accurate"] and resnet["replicas_reporting"] == 1
    assert resnet["replicas"][0]["device"] == "cpu"
    assert body["ingress"]["process"]["rss_mb"] > 0
    assert body["traffic"]["fast"]["stable"]["weight"] == 100


# -- dashboard -----------------------------------------------------------------------------
_PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "le",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, groupings,
    ranges and strings that are not functions or keywords."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return names - _PROMQL_WORDS


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(panel["targets"] for panel in panels)
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_dashboard_queries_only_exported_metrics():
    queried = set().union(*(promql_metric_names(expr) for expr in dashboard_exprs()))
    assert queried, "no metric names found"
    unknown = queried - metrics.DASHBOARD_NAMES
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"
    assert {"ray_clipfleet_requests_total", "ray_serve_deployment_replica_healthy"} <= queried


def test_dashboard_covers_the_operators_questions():
    titles = " | ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for topic in ("requests/s", "latency", "error", "batch size", "replicas", "canary"):
        assert topic in titles, topic


def test_promql_metric_name_extraction():
    expr = 'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{a="b"}[5m]))) / y_total'
    assert promql_metric_names(expr) == {"x_bucket", "y_total"}


def test_concurrent_cpu_probes_share_one_sampling_window():
    from clipfleet.observability.resources import WindowedPercent

    readings = iter([0.0, 40.0, 99.0])
    sampler = WindowedPercent(lambda: next(readings), window_s=0.2)
    assert sampler() == sampler() == 0.0  # inside the first window: no new reading
    time.sleep(0.25)
    assert sampler() == 40.0
    assert sampler() == 40.0  # a second probe right after gets the same window's figure
