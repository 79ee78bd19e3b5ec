"""Metrics, traces, status and logs of one app ("obs", at /obs) under real Ray Serve.

Every deployment of the app runs with CLIPFLEET_TRACING=file (through its runtime_env), so
spans from the ingress, fetcher, encoder and scorer processes land in one JSON-lines file; the
Ray metrics endpoint is scraped and parsed with prometheus_client's parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import requests
from prometheus_client.parser import text_string_to_metric_families

from clipfleet.observability.metrics import RAY_SERVE_BUILTIN_NAMES
from clipfleet.observability.tracing import TRACING_ENV, TRACING_FILE_ENV
from tests.support.images import image_base64
from tests.support.local_dag import tiny_app_args
from tests.support.serve_apps import small_deployments, wait_for, wait_ready
from tests.support.servers import ThreadedImageServer

APP = "obs"
PREFIX = "/obs"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
REQUEST_ID = "obs-request-0001"
FLUSH_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def spans_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spans") / "spans.jsonl"


@pytest.fixture(scope="module")
def obs_url(serve_apps, model_dir, spans_file):
    args = tiny_app_args(model_dir)
    env = {TRACING_ENV: "file", TRACING_FILE_ENV: str(spans_file)}
    deployments = small_deployments(args)
    for entry in deployments:
        entry["ray_actor_options"]["runtime_env"] = {"env_vars": env}
        entry["logging_config"] = {"encoding": "JSON"}
    serve_apps.apply(APP, PREFIX, args, deployments)
    url = serve_apps.url(PREFIX)
    wait_ready(url)
    return url


@pytest.fixture(scope="module")
def traffic(obs_url):
    """One traced score request, a few more requests, one failing fetch."""
    pair = {"image": {"base64": image_base64()}, "text": "a cat"}
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "X-Request-ID": REQUEST_ID}
    scored = requests.post(
        f"{obs_url}/v1/score", json={"pairs": [pair]}, headers=headers, timeout=60
    )
    assert scored.status_code == 200, scored.text
    for _ in range(3):
        texts = requests.post(f"{obs_url}/v1/embed/text", json={"texts": ["a", "b"]}, timeout=60)
        assert texts.status_code == 200, texts.text
    not_an_image = {"images": [{"base64": "aGVsbG8gd29ybGQh"}]}
    failed = requests.post(f"{obs_url}/v1/embed/image", json=not_an_image, timeout=60)
    assert failed.status_code == 415, failed.text
    return scored


def read_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_request_is_one_trace_across_processes(traffic, spans_file):
    def client_trace():
        spans = [s for s in read_spans(spans_file) if s["trace_id"] == CLIENT_TRACE]
        names = {s["name"] for s in spans}
        # an inline image goes straight to the encoder, with its text (one embed_pair call);
        # the fetcher's span for an image URL: test_image_url_fetch_is_a_client_span_in_the_fetcher
        wanted = {"POST /v1/score", "encoder.embed_pair", "Scorer.score_pair"}
        return spans if wanted <= names else None

    spans = wait_for(client_trace, 30, message="spans from every deployment")
    (root,) = [s for s in spans if s["name"] == "POST /v1/score"]
    assert root["parent_span_id"] == CLIENT_SPAN  # the client's traceparent is honoured
    children = [s for s in spans if s is not root]
    assert {s["parent_span_id"] for s in children} == {root["span_id"]}
    assert {s["attributes"]["clipfleet.request_id"] for s in spans} == {REQUEST_ID}
    assert len({s["pid"] for s in spans}) >= 3  # ingress, encoder, scorer processes
    deployments = {s["resource"].get("serve.deployment") for s in spans}
    assert {"Ingress", "Scorer", "clip_fast"} <= deployments


def scrape(port: int) -> dict[str, list]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def app_samples(samples: dict[str, list], name: str, **labels: str) -> list:
    wanted = {"application": APP, **labels}
    return [
        s
        for s in samples.get(name, [])
        if all(s.labels.get(key) == value for key, value in wanted.items())
    ]


EXPECTED_SERIES = [
    ("ray_clipfleet_requests_total", {"route": "/v1/score", "profile": "fast", "status": "200"}),
    ("ray_clipfleet_request_errors_total", {"route": "/v1/embed/image", "status": "415"}),
    ("ray_clipfleet_request_seconds_count", {"route": "/v1/embed/text", "variant": "stable"}),
    ("ray_clipfleet_stage_seconds_count", {"stage": "decode", "deployment": "clip_fast"}),
    ("ray_clipfleet_stage_seconds_count", {"stage": "encode", "deployment": "clip_fast"}),
    ("ray_clipfleet_stage_seconds_count", {"stage": "score", "deployment": "Scorer"}),
    ("ray_clipfleet_batch_size_count", {"kind": "text", "deployment": "clip_fast"}),
    ("ray_clipfleet_image_bytes_total", {"source": "base64"}),
    ("ray_clipfleet_image_pixels_total", {"source": "base64"}),
    ("ray_clipfleet_fetch_failures_total", {"stage": "decode", "reason": "unsupported_media_type"}),
    ("ray_clipfleet_traffic_weight", {"profile": "fast", "variant": "stable"}),
]


def test_metrics_reach_rays_endpoint(serve_apps, traffic):
    missing: list = []

    def complete():
        samples = scrape(serve_apps.metrics_port)
        missing[:] = [
            pair for pair in EXPECTED_SERIES if not app_samples(samples, *pair[:1], **pair[1])
        ]
        missing.extend(name for name in RAY_SERVE_BUILTIN_NAMES if name not in samples)
        return samples if not missing else None

    try:
        samples = wait_for(complete, FLUSH_TIMEOUT_S, interval_s=2)
    except AssertionError:
        raise AssertionError(f"never exported: {missing}") from None
    (score,) = app_samples(samples, "ray_clipfleet_requests_total", route="/v1/score")
    assert score.value == 1 and score.labels["variant"] == "stable"
    (texts,) = app_samples(samples, "ray_clipfleet_requests_total", route="/v1/embed/text")
    assert texts.value == 3
    latency = app_samples(samples, "ray_clipfleet_request_seconds_sum", route="/v1/score")
    assert 0 < latency[0].value < 60
    pixels = app_samples(samples, "ray_clipfleet_image_pixels_total", source="base64")
    # one image made it through decoding, at most at its own size (decoded to the model's square)
    assert 0 < sum(s.value for s in pixels) <= 96 * 72
    weights = app_samples(samples, "ray_clipfleet_traffic_weight", variant="stable")
    assert {weight.value for weight in weights} == {100}
    routes = {s.labels["route"] for s in app_samples(samples, "ray_clipfleet_requests_total")}
    assert all(route.startswith("/") or route == "unmatched" for route in routes)


def test_status_reports_every_deployment_and_encoder_replica(obs_url, traffic):
    status = requests.get(f"{obs_url}/v1/status", timeout=60)
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["application"] == APP
    assert set(body["deployments"]) == {
        "Ingress",
        "ImageFetcher",
        "Scorer",
        "clip_fast",
        "clip_accurate",
        "resnet_resnet18",
    }
    assert all(d["replicas"].get("RUNNING", 0) >= 1 for d in body["deployments"].values())
    for name in ("clip_fast", "clip_accurate", "resnet_resnet18"):
        encoder = body["encoders"][name]
        assert encoder["replicas_running"] == encoder["replicas_reporting"] == 1
        (replica,) = encoder["replicas"]
        assert replica["device"] == "cpu" and replica["load_seconds"] > 0
        assert replica["weights"] and replica["process"]["rss_mb"] > 50
        assert "gpu_memory_used_gb" not in replica["process"]  # CPU: no GPU figures
    assert body["ingress"]["process"]["rss_mb"] > 0


def test_ingress_logs_one_json_line_per_request(traffic):
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"

    def request_line():
        for path in logs.glob(f"replica_{APP}_Ingress_*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if REQUEST_ID in line and '"latency_ms"' in line:
                    return json.loads(line)
        return None

    line = wait_for(request_line, 20, message="the ingress's request log line")
    assert line["request_id"] == REQUEST_ID and line["status"] == 200
    assert line["profile"] == "fast" and line["variant"] == "stable"
    assert line["route"].endswith("/v1/score") and line["latency_ms"] > 0
    assert line["trace_id"] == CLIENT_TRACE


def test_image_url_fetch_is_a_client_span_in_the_fetcher(obs_url, spans_file):
    trace = "5cf92f3577b34da6a3ce929d0e0e4737"
    server = ThreadedImageServer().start()
    try:
        embedded = requests.post(
            f"{obs_url}/v1/embed/image",
            json={"images": [{"url": f"{server.base_url}/img.jpg"}]},
            headers={"traceparent": f"00-{trace}-{CLIENT_SPAN}-01"},
            timeout=60,
        )
    finally:
        server.stop()
    assert embedded.status_code == 200, embedded.text

    def fetch_spans():
        spans = [s for s in read_spans(spans_file) if s["trace_id"] == trace]
        names = {s["name"] for s in spans}
        return spans if {"ImageFetcher.fetch", "GET"} <= names else None

    spans = wait_for(fetch_spans, 30, message="the fetcher's spans")
    (fetch,) = [s for s in spans if s["name"] == "ImageFetcher.fetch"]
    (get,) = [s for s in spans if s["name"] == "GET"]
    assert get["kind"] == "CLIENT" and get["parent_span_id"] == fetch["span_id"]
    assert get["pid"] == fetch["pid"]  # made in the fetcher's process
    attributes = get["attributes"]
    assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == 200
