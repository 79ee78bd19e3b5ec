"""A stream that repeats a set of images, and the fleet's cache figures read from every replica
of an encoder: shared by tests/integration/test_fleet_cache.py and loadtests/affinity.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.support.images import image_base64


def repeating_stream(distinct: int, rounds: int, seed: int = 0) -> list[str]:
    """`distinct` images (base64 JPEGs), each sent `rounds` times, round after round."""
    images = [image_base64(seed=seed + index) for index in range(distinct)]
    return images * rounds


def send_stream(url: str, images: list[str], profile: str, workers: int = 4) -> list[int]:
    """POST each image to /v1/embed/image on its own (`workers` at a time); the statuses."""

    def one(image: str) -> int:
        body = {"images": [{"base64": image}], "profile": profile}
        try:
            return requests.post(f"{url}/v1/embed/image", json=body, timeout=60).status_code
        except requests.RequestException:
            return 0

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, images))


def replica_stats(handle: Any, replicas: int, timeout_s: float = 60.0) -> dict[str, dict]:
    """Each replica's `describe()["cache"]` (describe is routed at random: asked until every
    one of `replicas` has answered)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(seen)} of {replicas} replicas answered describe")
        answer = handle.describe.remote().result(timeout_s=30)
        seen[answer["replica_id"]] = answer["cache"]
    return seen


def fleet_image_hit_rate(before: dict[str, dict], after: dict[str, dict]) -> float:
    """Local cache hits / lookups over every replica, between two replica_stats readings."""
    hits = sum(after[r]["hits"] - before.get(r, {}).get("hits", 0) for r in after)
    misses = sum(after[r]["misses"] - before.get(r, {}).get("misses", 0) for r in after)
    return hits / (hits + misses) if hits + misses else 0.0


def one_replica_hit_rate(distinct: int, rounds: int) -> float:
    """What one replica with room for every image gets: each image misses once."""
    return 1 - distinct / (distinct * rounds)
