"""One cache for the fleet (issue 26), under a real Serve, one app at /fleet:

- clip_fast: two replicas with content-affinity routing: a stream repeating 20 images hits the
  fleet's caches as often as one replica's cache would be hit (within 5 points);
- clip_accurate: two replicas without affinity, sharing a real Redis server
  (tests/support/redis_server.py): an image computed on one replica is a hit on the other, and
  stopping the server mid-stream fails no request.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from ray import serve

from tests.support.fleet_cache import (
    fleet_image_hit_rate,
    one_replica_hit_rate,
    repeating_stream,
    replica_stats,
    send_stream,
)
from tests.support.local_dag import tiny_app_args
from tests.support.redis_server import PASSWORD, RedisServer
from tests.support.serve_apps import merge_deployments, small_deployments, wait_ready

APP, PREFIX = "fleet", "/fleet"
DISTINCT, ROUNDS = 20, 5


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def fleet(serve_apps, model_dir, redis_server):
    args = tiny_app_args(model_dir, affinity={"deployments": ["clip_fast"]})
    shared = {"url": redis_server.url, "timeout_s": 0.25, "breaker_failures": 3}
    overrides = [
        {"name": "clip_fast", "num_replicas": 2},
        {
            "name": "clip_accurate",
            "num_replicas": 2,
            "user_config": {"cache": {"shared": shared}},
            "ray_actor_options": {
                "num_cpus": 0.2,
                "runtime_env": {"env_vars": {"CLIPFLEET_CACHE_PASSWORD": PASSWORD}},
            },
        },
    ]
    serve_apps.apply(APP, PREFIX, args, merge_deployments(small_deployments(args), overrides))
    wait_ready(serve_apps.url(PREFIX))
    return serve_apps.url(PREFIX)


def handle(name: str):
    return serve.get_deployment_handle(name, app_name=APP)


def test_two_replicas_with_affinity_hit_as_often_as_one(fleet):
    encoder = handle("clip_fast")
    before = replica_stats(encoder, 2)
    statuses = send_stream(fleet, repeating_stream(DISTINCT, ROUNDS, seed=100), "fast")
    assert statuses == [200] * DISTINCT * ROUNDS
    after = replica_stats(encoder, 2)
    fleet_rate = fleet_image_hit_rate(before, after)
    assert fleet_rate >= one_replica_hit_rate(DISTINCT, ROUNDS) - 0.05, after
    # both replicas served: the content was split, not all sent to one
    assert all(after[r]["entries"] > before[r]["entries"] for r in after), after


def test_two_replicas_share_hits_through_the_server(fleet, redis_server):
    encoder = handle("clip_accurate")
    before = replica_stats(encoder, 2)
    statuses = send_stream(fleet, repeating_stream(DISTINCT, ROUNDS, seed=200), "accurate")
    assert statuses == [200] * DISTINCT * ROUNDS
    after = replica_stats(encoder, 2)

    def total(field: str) -> int:
        return sum(after[r]["shared"][field] - before[r]["shared"][field] for r in after)

    # every image computed about once in the fleet (each computation is a shared miss), the
    # rest found locally or, on the other replica, in the shared cache
    assert total("misses") <= DISTINCT + 2, after
    assert total("hits") >= 1, after
    assert redis_server.client().dbsize() >= DISTINCT


def test_stopping_the_server_mid_stream_fails_no_request(fleet, redis_server):
    images = repeating_stream(DISTINCT, 5, seed=300)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(send_stream, fleet, images, "accurate", 2)
        time.sleep(0.3)
        redis_server.stop()
        statuses = running.result(timeout=240)
    # and images no replica has seen, certainly looked up while the server is down
    unseen = repeating_stream(10, 1, seed=400)
    statuses += send_stream(fleet, unseen, "accurate", 2)
    assert statuses == [200] * (len(images) + len(unseen))
    stats = replica_stats(handle("clip_accurate"), 2).values()
    assert sum(one["shared"]["errors"] + one["shared"]["skipped"] for one in stats) > 0


def test_a_bad_image_is_the_same_client_error_with_and_without_affinity(fleet):
    """With affinity the Ingress reads the fetch's answer itself: a fetch failure must still
    reach the client as the fetcher's 4xx, as it does on the default path."""
    import requests

    answers = {}
    for profile in ("fast", "accurate"):  # clip_fast has affinity, clip_accurate not
        body = {"images": [{"base64": "bm90IGFuIGltYWdl"}], "profile": profile}
        response = requests.post(f"{fleet}/v1/embed/image", json=body, timeout=60)
        answers[profile] = (response.status_code, response.json()["error"]["type"])
    assert answers["fast"] == answers["accurate"] and 400 <= answers["fast"][0] < 500, answers
