"""runtime onnx / precision int8, the forward lease and fetch.gpu_decode under a real Serve.

One app ("runtimes", at /runtimes) over the same tiny on-disk models as the main app: its CLIP
image tower on ONNX Runtime int8, its ResNet on ONNX Runtime fp32, JPEGs shipped undecoded to
the (CPU) encoders, which decode them themselves. Its embeddings are compared with the main
app's (torch, fetcher-decoded) for the same image URL.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from clipfleet.config import AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from tests.support.local_dag import loopback_fetch
from tests.support.serve_apps import merge_deployments, small_deployments, wait_ready

APP, PREFIX = "runtimes", "/runtimes"


@pytest.fixture(scope="module")
def runtimes_url(serve_apps, model_dir, app_url, tmp_path_factory):
    lease_dir = str(tmp_path_factory.mktemp("lease"))
    args = AppArgs(
        profiles={
            "fast": ProfileSpec(
                clip=ClipModelSpec(
                    model=f"local-dir:{model_dir / 'open_clip'}", runtime="onnx", precision="int8"
                ),
                resnet=ResNetSpec(
                    model="resnet18", weights=str(model_dir / "resnet18.pt"), runtime="onnx"
                ),
            )
        },
        fetch=loopback_fetch(gpu_decode=True),
    )
    env = {"runtime_env": {"env_vars": {"CLIPFLEET_LEASE_DIR": lease_dir}}}
    encoders = [
        {"name": name, "ray_actor_options": {"num_cpus": 0.2, **env}}
        for name in ("clip_fast", "resnet_resnet18")
    ]
    serve_apps.apply(APP, PREFIX, args, merge_deployments(small_deployments(args), encoders))
    wait_ready(serve_apps.url(PREFIX))
    return serve_apps.url(PREFIX)


def embed(base_url: str, url: str, encoder: str) -> np.ndarray:
    body = {"images": [{"url": url}], "encoder": encoder}
    response = requests.post(f"{base_url}/v1/embed/image", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"][0])


def test_models_report_runtime_precision_calibration_and_lease(runtimes_url):
    profile = requests.get(f"{runtimes_url}/v1/status", timeout=10).json()["profiles"]["fast"]
    clip = profile["clip"]["stable"]
    assert (clip["runtime"], clip["precision"]) == ("onnx", "int8")
    calibration = clip["int8_cosine_vs_fp32"]
    assert calibration["images"] >= 32 and calibration["min"] >= calibration["floor"] == 0.99
    resnet = profile["resnet"]
    assert (resnet["runtime"], resnet["precision"]) == ("onnx", "fp32")
    assert clip["forward_lease"]["slots"] >= 1 and clip["torch_threads"] >= 1


def test_onnx_embeddings_match_the_torch_app(runtimes_url, app_url, image_server):
    url = f"{image_server.base_url}/img.jpg"  # a JPEG: shipped undecoded, decoded by encoders
    fp32 = embed(runtimes_url, url, "resnet") @ embed(app_url, url, "resnet")
    assert fp32 >= 0.9999
    int8 = embed(runtimes_url, url, "clip") @ embed(app_url, url, "clip")
    assert int8 >= 0.98
    score = requests.post(
        f"{runtimes_url}/v1/score",
        json={"pairs": [{"image": {"url": url}, "text": "a cat"}]},
        timeout=60,
    )
    assert score.status_code == 200, score.text
