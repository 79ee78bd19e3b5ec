"""Locust scenarios for clipfleet: the real request mix across the fast / accurate profiles.

    make loadtest             # headless, bounded, CSV + HTML under results/
    make loadtest-ui          # the Locust web UI on http://127.0.0.1:8089

Images come from the loopback image server (`python -m loadtests.images`), whose base URL is
CLIPFLEET_IMAGE_BASE. Each response's variant is recorded as an extra stats row named
`variant <profile>/<variant>`, so the CSV shows how traffic split.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, events, task

IMAGE_BASE = os.environ.get("CLIPFLEET_IMAGE_BASE", "http://127.0.0.1:8091")
IMAGE_COUNT = int(os.environ.get("CLIPFLEET_IMAGE_COUNT", "64"))  # as served by loadtests.images
IMAGE_NAMES = [f"{i}.{('jpg', 'png', 'webp')[i % 3]}" for i in range(IMAGE_COUNT)]
PROFILES = [p for p in os.environ.get("CLIPFLEET_PROFILES", "fast,accurate").split(",") if p]
PROFILE_WEIGHTS = {"fast": 4, "accurate": 1}
TEXTS = ["a photo of a cat", "a dog on a beach", "a red car", "a bowl of fruit", "a city at night"]


def image_ref() -> dict:
    return {"url": f"{IMAGE_BASE}/img/{random.choice(IMAGE_NAMES)}"}


def pick_profile() -> str:
    weights = [PROFILE_WEIGHTS.get(profile, 1) for profile in PROFILES]
    return random.choices(PROFILES, weights)[0]


class ClipfleetUser(HttpUser):
    abstract = True
    wait_time = between(0.0, 0.2)

    def post(self, route: str, body: dict) -> None:
        profile = body.setdefault("profile", pick_profile())
        name = f"{route} [{profile}]"
        with self.client.post(route, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            variant = response.headers.get("X-Clipfleet-Variant", "?")
            events.request.fire(
                request_type="variant",
                name=f"{profile}/{variant}",
                response_time=response.elapsed.total_seconds() * 1000,
                response_length=0,
                exception=None,
                context={},
            )


class ScoreUser(ClipfleetUser):
    weight = 4

    @task(3)
    def score_one(self) -> None:
        self.post("/v1/score", {"pairs": [{"image": image_ref(), "text": random.choice(TEXTS)}]})

    @task(1)
    def score_batch(self) -> None:
        pairs = [{"image": image_ref(), "text": random.choice(TEXTS)} for _ in range(8)]
        self.post("/v1/score", {"pairs": pairs})


class EmbedUser(ClipfleetUser):
    weight = 2

    @task(2)
    def embed_image_clip(self) -> None:
        self.post("/v1/embed/image", {"images": [image_ref()], "encoder": "clip"})

    @task(1)
    def embed_image_resnet(self) -> None:
        self.post("/v1/embed/image", {"images": [image_ref()], "encoder": "resnet"})

    @task(2)
    def embed_text(self) -> None:
        self.post("/v1/embed/text", {"texts": random.sample(TEXTS, 2)})


class TagUser(ClipfleetUser):
    weight = 1

    @task
    def tag(self) -> None:
        self.post("/v1/tag", {"image": image_ref(), "top_k": 3})
