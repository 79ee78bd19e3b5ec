"""What the README promises: `CLIPFLEET_RANDOM_WEIGHTS=1 serve run serve_config.yaml` serves
every route on 127.0.0.1:8000 with the real ViT-B-32, ViT-L-14 and ResNet-50 architectures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from clipfleet.tools.processes import stop_tree
from tests.support.images import image_base64

ROOT = Path(__file__).resolve().parents[2]
BASE_URL = "http://127.0.0.1:8000"
START_TIMEOUT_S = 420

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def served():
    serve_bin = Path(sys.executable).parent / "serve"
    env = {**os.environ, "CLIPFLEET_RANDOM_WEIGHTS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    log = (ROOT / ".pytest-serve-run.log").open("wb")
    process = subprocess.Popen(
        [str(serve_bin), "run", "serve_config.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        while time.monotonic() - started < START_TIMEOUT_S:
            assert process.poll() is None, "serve run exited; see .pytest-serve-run.log"
            try:
                if requests.get(f"{BASE_URL}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"not ready within {START_TIMEOUT_S} s")
        print(f"\nserve run ready after {time.monotonic() - started:.1f} s")
        yield BASE_URL
    finally:
        stop_tree(process)
        log.close()


def test_real_architectures_in_random_weights_mode(served):
    ready = requests.get(f"{served}/readyz", timeout=10).json()
    assert ready["random_weights"] is True
    profiles = requests.get(f"{served}/v1/status", timeout=30).json()["profiles"]
    assert profiles["fast"]["clip"]["stable"]["model"] == "ViT-B-32"
    assert profiles["fast"]["clip"]["stable"]["embed_dim"] == 512
    assert profiles["accurate"]["clip"]["stable"]["model"] == "ViT-L-14"
    assert profiles["accurate"]["clip"]["stable"]["embed_dim"] == 768
    assert profiles["fast"]["resnet"]["embed_dim"] == 2048
    assert all(v["weights"] == "random" for p in profiles.values() for v in p["clip"].values())
    canary = profiles["fast"]["clip"]["canary"]
    assert canary["pretrained"] == "datacomp_xl_s13b_b90k" and canary["embed_dim"] == 512
    assert canary["traffic"]["configured_weight"] == 10


@pytest.mark.parametrize("profile", ["fast", "accurate"])
def test_score_and_embeddings_per_profile(served, profile):
    image = {"base64": image_base64(width=320, height=240)}
    score = requests.post(
        f"{served}/v1/score",
        json={"pairs": [{"image": image, "text": "a cat"}], "profile": profile},
        timeout=120,
    )
    assert score.status_code == 200, score.text
    assert score.json()["profile"] == profile
    resnet = requests.post(
        f"{served}/v1/embed/image",
        json={"images": [image], "encoder": "resnet", "profile": profile},
        timeout=120,
    )
    assert resnet.status_code == 200 and resnet.json()["dim"] == 2048
    tags = requests.post(f"{served}/v1/tag", json={"image": image, "profile": profile}, timeout=120)
    assert tags.status_code == 200 and len(tags.json()["tags"]) == 5


def test_canary_can_be_pinned(served):
    response = requests.post(
        f"{served}/v1/embed/text",
        json={"texts": ["a cat"]},
        headers={"X-Clipfleet-Variant": "canary"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["variant"] == "canary"
    assert response.json()["model"] == "ViT-B-32/datacomp_xl_s13b_b90k"
