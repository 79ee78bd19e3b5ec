"""A multiplexed profile over real local Ray Serve: three small checkpoints, an LRU of two.

Serve's own `@serve.multiplexed` LRU and routing run here; what is checked: evictions happen
and are reported, each id's vectors come from its own checkpoint, a bad or disallowed id is a
404/403 that evicts nothing, a broken checkpoint is an error for that id only.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from clipfleet.config import AppArgs, ClipModelSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from tests.support.serve_apps import small_deployments, wait_ready

PROFILE = "custom"
TEXT = "a photo of a cat"


@pytest.fixture(scope="module")
def mux_url(serve_apps, tiny_args, multiplexed_checkpoints):
    args = AppArgs(
        **{
            **tiny_args.model_dump(),
            # one ordinary profile (AppArgs needs one): fewer replicas on the shared CI machine
            "profiles": {"fast": tiny_args.profiles["fast"].model_dump()},
            "default_profile": "fast",
            "multiplexed": {
                PROFILE: {
                    "checkpoint_dir": str(multiplexed_checkpoints),
                    "max_models_per_replica": 2,
                }
            },
        }
    )
    serve_apps.apply("multiplexed", "/mux", args, small_deployments(args, cpus=0.2))
    wait_ready(serve_apps.url("/mux"))
    return serve_apps.url("/mux")


def embed(url: str, model_id: str) -> requests.Response:
    body = {"texts": [TEXT], "model": f"{PROFILE}:{model_id}"}
    return requests.post(f"{url}/v1/embed/text", json=body, timeout=120)


def pool(url: str) -> dict:
    models = requests.get(f"{url}/v1/status", timeout=30).json()
    return models["multiplexed"][PROFILE]["replica"]


def own_vector(checkpoints, model_id: str) -> np.ndarray:
    spec = ClipModelSpec(model=f"local-dir:{checkpoints / model_id}")
    return load_clip_model(spec, choose_device("cpu"), random_weights=False).encode_texts([TEXT])[0]


def test_lru_of_two_over_real_serve(mux_url, multiplexed_checkpoints):
    vectors = {}
    for model_id in ("alpha", "beta", "gamma"):
        response = embed(mux_url, model_id)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == f"{PROFILE}:{model_id}"
        vectors[model_id] = np.array(response.json()["embeddings"][0])
    for model_id, vector in vectors.items():  # each id: its own checkpoint's vector
        np.testing.assert_allclose(vector, own_vector(multiplexed_checkpoints, model_id), atol=1e-5)
    state = pool(mux_url)
    assert [entry["id"] for entry in state["resident"]] == ["beta", "gamma"]
    assert state["loads"] == 3 and state["evictions"] == 1

    for model_id, status, error_type in (
        ("escape", 403, "forbidden"),
        ("nope", 404, "model_not_found"),
        ("broken", 500, "model_load_failed"),
    ):
        response = embed(mux_url, model_id)
        assert response.status_code == status, response.text
        assert response.json()["error"]["type"] == error_type
    state = pool(mux_url)
    assert [entry["id"] for entry in state["resident"]] == ["beta", "gamma"]  # nothing evicted
    assert state["evictions"] == 1 and state["load_failures"] == 1

    again = embed(mux_url, "alpha")  # the replica is fine after the failure; alpha reloads
    assert again.status_code == 200, again.text
    np.testing.assert_allclose(again.json()["embeddings"][0], vectors["alpha"], atol=1e-5)
    state = pool(mux_url)
    assert [entry["id"] for entry in state["resident"]] == ["gamma", "alpha"]
    assert state["evictions"] == 2 and state["loads"] == 4
    assert all(entry["load_seconds"] > 0 for entry in state["resident"])


def test_header_and_image_paths_over_real_serve(mux_url):
    from tests.support.images import image_base64

    body = {"image": {"base64": image_base64()}, "labels": ["cat", "dog"]}
    response = requests.post(
        f"{mux_url}/v1/tag",
        json=body,
        headers={"X-Clipfleet-Model": f"{PROFILE}:gamma"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["activation"] == "softmax"
    assert response.json()["model"] == f"{PROFILE}:gamma"
