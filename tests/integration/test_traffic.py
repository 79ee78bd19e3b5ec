"""Canary splits, stickiness, automatic rollback and live reconfiguration under real Serve.

One app ("traffic", at /traffic) with a stable and a canary CLIP variant, redeployed with
edited user_configs exactly as `serve deploy` of an edited serve_config.yaml would.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import requests

from clipfleet.config import AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from tests.support.serve_apps import merge_deployments, small_deployments, wait_for, wait_ready

APP = "traffic"
PREFIX = "/traffic"
CANARY_DEPLOYMENT = "clip_fast_canary"


@pytest.fixture(scope="module")
def traffic_args(model_dir) -> AppArgs:
    stable = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    canary = ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip"))
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    profile = ProfileSpec(variants={"stable": stable, "canary": canary}, resnet=resnet)
    return AppArgs(profiles={"fast": profile})


def deploy(
    serve_apps, args, ingress_config, canary_config=None, stable_config=None, ingress_replicas=1
):
    overrides = [
        {"name": "Ingress", "user_config": ingress_config, "num_replicas": ingress_replicas}
    ]
    if canary_config is not None:
        overrides.append({"name": CANARY_DEPLOYMENT, "user_config": canary_config})
    if stable_config is not None:
        overrides.append({"name": "clip_fast", "user_config": stable_config})
    serve_apps.apply(APP, PREFIX, args, merge_deployments(small_deployments(args), overrides))


@pytest.fixture(scope="module")
def traffic_url(serve_apps, traffic_args):
    deploy(serve_apps, traffic_args, {"weights": {"fast": {"stable": 90, "canary": 10}}})
    url = serve_apps.url(PREFIX)
    wait_ready(url)
    return url


def embed_text(url: str, key: str | None = None, variant: str | None = None) -> requests.Response:
    headers = {}
    if key is not None:
        headers["X-Clipfleet-Route-Key"] = key
    if variant is not None:
        headers["X-Clipfleet-Variant"] = variant
    return requests.post(
        f"{url}/v1/embed/text", json={"texts": ["a cat"]}, headers=headers, timeout=60
    )


def variants_for(url: str, keys: list[str | None]) -> list[tuple[int, str]]:
    def call(key):
        response = embed_text(url, key)
        return response.status_code, response.headers.get("X-Clipfleet-Variant", "")

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(call, keys))


def replica_actor_ids(deployment: str) -> set[str]:
    """Serve names each replica actor SERVE_REPLICA::<app>#<deployment>#<replica id>."""
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)]
    return {name for name in names if name.startswith(prefix)}


def ingress_traffic(url: str) -> dict:
    return requests.get(f"{url}/v1/models/fast", timeout=30).json()["clip"]


def test_split_matches_weights_and_keys_are_sticky(traffic_url):
    results = variants_for(traffic_url, [f"client-{i}" for i in range(1000)])
    assert all(status == 200 for status, _ in results)
    counts = Counter(variant for _, variant in results)
    assert set(counts) == {"stable", "canary"}
    assert 60 <= counts["canary"] <= 140, counts  # 100 expected; ± ~4 standard deviations
    again = variants_for(traffic_url, [f"client-{i}" for i in range(200)])
    assert [variant for _, variant in again] == [variant for _, variant in results[:200]]
    pinned = embed_text(traffic_url, variant="canary")
    assert pinned.headers["X-Clipfleet-Variant"] == "canary"
    assert pinned.json()["variant"] == "canary" and pinned.json()["model"].endswith("hf_clip")
    assert embed_text(traffic_url, variant="nope").status_code == 422


def test_live_reconfiguration_keeps_replicas(serve_apps, traffic_args, traffic_url):
    before = {name: replica_actor_ids(name) for name in ("Ingress", "clip_fast")}
    assert all(before.values())
    deploy(
        serve_apps,
        traffic_args,
        {"weights": {"fast": {"stable": 50, "canary": 50}}},
        stable_config={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
    )

    def applied():
        stable = ingress_traffic(traffic_url)["stable"]
        return (
            stable["traffic"]["weight"] == 50
            and stable.get("config", {}).get("max_batch_size") == 4
        )

    wait_for(applied, 90, message="new weights and batch size")
    results = variants_for(traffic_url, [None] * 300)
    share = Counter(variant for _, variant in results)["canary"] / len(results)
    assert 0.38 < share < 0.62, share
    assert {name: replica_actor_ids(name) for name in before} == before


INVALID_HOST_URLS = ["http://a..b/x.jpg", "http://xn--/x.jpg", f"http://{'a' * 64}.example/x.jpg"]


def test_hostile_urls_never_roll_a_healthy_canary_back(serve_apps, traffic_args, traffic_url):
    """Under real Serve: image URLs whose host is invalid IDNA (today's UnicodeError in name
    resolution was a 500 counted against the canary) sent unpinned to a healthy canary, in
    waves that the guard judges, are 400 invalid_url and leave it in."""
    ingress = {
        "weights": {"fast": {"stable": 50, "canary": 50}},
        "rollback": {"min_requests": 10, "window_s": 120},
    }
    deploy(serve_apps, traffic_args, ingress)
    wait_for(
        lambda: ingress_traffic(traffic_url)["canary"]["traffic"]["configured_weight"] == 50,
        90,
        message="a healthy canary at 50 %",
    )
    canary_keys = [key for key in (f"k-{n}" for n in range(80)) if is_canary(traffic_url, key)]
    assert len(canary_keys) >= 10

    def hostile(key_and_url: tuple[str, str]) -> tuple[int, str, str]:
        key, url = key_and_url
        body = {"images": [{"url": url}]}
        headers = {"X-Clipfleet-Route-Key": key}
        response = requests.post(
            f"{traffic_url}/v1/embed/image", json=body, headers=headers, timeout=60
        )
        error = response.json()["error"]
        return response.status_code, error["type"], response.headers["X-Clipfleet-Variant"]

    sent = []
    for _ in range(6):  # the guard judges about once a second
        urls = [(key, INVALID_HOST_URLS[n % 3]) for n, key in enumerate(canary_keys[:10])]
        with ThreadPoolExecutor(10) as pool:
            sent += list(pool.map(hostile, urls))
        time.sleep(0.5)
    assert set(sent) == {(400, "invalid_url", "canary")}, Counter(sent)
    time.sleep(2)  # one more judgement after the last wave
    canary = ingress_traffic(traffic_url)["canary"]["traffic"]
    assert not canary["rolled_back"] and canary["weight"] == 50, canary
    assert canary["window_errors"] == 0, canary


def is_canary(url: str, key: str) -> bool:
    return embed_text(url, key).headers.get("X-Clipfleet-Variant") == "canary"


def test_failing_canary_is_rolled_back_while_stable_never_fails(
    serve_apps, traffic_args, traffic_url
):
    ingress = {
        "weights": {"fast": {"stable": 60, "canary": 40}},
        "rollback": {"min_requests": 10, "window_s": 120},
    }
    deploy(serve_apps, traffic_args, ingress, canary_config={"fault_error_ratio": 1.0})
    wait_for(
        lambda: (
            ingress_traffic(traffic_url)["canary"].get("config", {}).get("fault_error_ratio") == 1.0
            and ingress_traffic(traffic_url)["canary"]["traffic"]["configured_weight"] == 40
        ),
        90,
        message="failing canary deployed",
    )
    # Rollbacks are judged off the request path, about once a second and within ~0.1-0.5 s of a
    # canary failure, so the 120 requests come in waves of 10 (a burst faster than one judgement
    # would measure the race, not the guard).
    results = []
    for _ in range(12):
        results += variants_for(traffic_url, [None] * 10)
        time.sleep(0.25)
    stable_statuses = {status for status, variant in results if variant == "stable"}
    assert stable_statuses == {200}
    canary_failures = [status for status, variant in results if variant == "canary"]
    assert 10 <= len(canary_failures) <= 40 and set(canary_failures) == {500}
    canary = ingress_traffic(traffic_url)["canary"]["traffic"]
    assert canary["rolled_back"] and canary["weight"] == 0
    assert "error ratio" in canary["rollback_reason"]
    after = variants_for(traffic_url, [None] * 40)
    assert after == [(200, "stable")] * 40


def models_view(url: str) -> dict:
    return requests.get(f"{url}/v1/status", timeout=30).json()


def test_rollback_is_the_apps_and_survives_replicas_and_redeploys(
    serve_apps, traffic_args, traffic_url
):
    """Two ingress replicas share one traffic state: a redeploy with unchanged weights and a
    killed (then replaced) ingress replica both leave the rolled-back canary rolled back."""
    ingress = {
        "weights": {"fast": {"stable": 60, "canary": 40}},
        "rollback": {"min_requests": 10, "window_s": 120},
    }
    deploy(
        serve_apps,
        traffic_args,
        ingress,
        canary_config={"fault_error_ratio": 1.0},
        ingress_replicas=2,
    )
    wait_for(lambda: len(replica_actor_ids("Ingress")) == 2, 120, message="2 ingress replicas")
    wait_ready(traffic_url)
    # Whichever replica answers, it reports the application's state: still rolled back.
    for _ in range(20):
        view = models_view(traffic_url)
        canary = view["profiles"]["fast"]["clip"]["canary"]["traffic"]
        assert canary["rolled_back"] and canary["weight"] == 0, view["traffic_state"]
    status = requests.get(f"{traffic_url}/v1/status", timeout=30).json()
    assert status["traffic"]["fast"]["canary"]["rolled_back"]
    metrics = requests.get(f"{traffic_url}/evaluator/metrics", timeout=30).text
    assert 'clipfleet_compat_canary_rolled_back{profile="fast",variant="canary"} 1.0' in metrics

    victim = sorted(replica_actor_ids("Ingress"))[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    wait_for(
        lambda: (
            victim not in replica_actor_ids("Ingress") and len(replica_actor_ids("Ingress")) == 2
        ),
        120,
        message="ingress replica replaced",
    )
    wait_ready(traffic_url)
    results = variants_for(traffic_url, [None] * 200 + [f"client-{i}" for i in range(200)])
    assert Counter(results) == Counter({(200, "stable"): 400}), Counter(results)
