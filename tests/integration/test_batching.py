"""Batches fill behind a slow forward, under a real Serve (the ForwardScheduler's reason to be).

One app ("batching", at /batching) whose CLIP encoder is the real ViT-B-32 architecture with
random weights: a forward of one image takes a few hundred ms on these cores, long enough for
requests that arrive meanwhile to queue behind it. With `batch_wait_timeout_s: 0` `@serve.batch`
alone would run each of them as its own batch; merged, they run as a few large ones.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ray import serve

from clipfleet.config import AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from tests.support.serve_apps import merge_deployments, small_deployments, wait_ready

APP, PREFIX, ENCODER = "batching", "/batching", "clip_fast"
ITEMS, MAX_BATCH, ARRIVAL_GAP_S = 12, 8, 0.03


@pytest.fixture(scope="module")
def encoder(serve_apps, model_dir):
    args = AppArgs(
        profiles={
            "fast": ProfileSpec(
                clip=ClipModelSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k"),
                resnet=ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt")),
            )
        }
    )
    slow_encoder = {
        "name": ENCODER,
        "user_config": {
            "max_batch_size": MAX_BATCH,
            "batch_wait_timeout_s": 0,
            "cache": {"enabled": False},
        },
        "ray_actor_options": {
            "num_cpus": 0.2,
            "runtime_env": {"env_vars": {"CLIPFLEET_RANDOM_WEIGHTS": "1"}},
        },
    }
    serve_apps.apply(APP, PREFIX, args, merge_deployments(small_deployments(args), [slow_encoder]))
    wait_ready(serve_apps.url(PREFIX))
    return serve.get_deployment_handle(ENCODER, app_name=APP)


def test_requests_arriving_during_a_forward_are_merged_into_full_batches(encoder):
    before = encoder.describe.remote().result()["batch_sizes"]
    rng = np.random.default_rng(11)
    responses = []
    for _ in range(ITEMS):  # one at a time, as clients would, while the first forward runs
        image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        responses.append(encoder.embed_image.remote(image))
        time.sleep(ARRIVAL_GAP_S)
    vectors = [response.result(timeout_s=120) for response in responses]
    assert all(vector.shape == vectors[0].shape for vector in vectors)

    after = encoder.describe.remote().result()["batch_sizes"]
    forwards = {
        int(size): count - before.get(size, 0)
        for size, count in after.items()
        if count > before.get(size, 0)
    }
    assert sum(size * count for size, count in forwards.items()) == ITEMS
    assert max(forwards) <= MAX_BATCH
    # unmerged, twelve arrivals 30 ms apart behind a ~0.3 s forward run as ~12 forwards of one
    assert sum(forwards.values()) <= 5, forwards
