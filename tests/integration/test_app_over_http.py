"""The whole DAG under a real local Ray Serve, exercised over HTTP on 127.0.0.1."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from ray import serve

from clipfleet.config import clip_deployment_name
from tests.support.images import image_base64, image_bytes
from tests.support.serve_apps import APP_NAME


def post(app_url: str, path: str, **kwargs) -> requests.Response:
    return requests.post(app_url + path, timeout=60, **kwargs)


def test_ready_and_models_report_every_deployment(app_url):
    ready = requests.get(f"{app_url}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["random_weights"] is False
    assert {"image_fetcher", "scorer", "fast.clip", "fast.resnet", "accurate.clip"} <= set(
        ready["deployments"]
    )
    status = requests.get(f"{app_url}/v1/status", timeout=30).json()
    assert status["profiles"]["fast"]["clip"]["stable"]["embed_dim"] == 32
    model = requests.get(f"{app_url}/v1/models/fast/stable", timeout=10).json()
    assert model["id"] == "fast/stable" and model["clip"]["stable"]["embed_dim"] == 32
    assert requests.get(f"{app_url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{app_url}/docs", timeout=10).status_code == 200


def test_every_route_with_images_by_url(app_url, image_server):
    url = {"url": f"{image_server.base_url}/img.jpg"}
    score = post(app_url, "/v1/score", json={"pairs": [{"image": url, "text": "a cat"}] * 2})
    assert score.status_code == 200, score.text
    assert len(score.json()["results"]) == 2 and score.headers["X-Clipfleet-Profile"] == "fast"

    for encoder, dim in (("clip", 32), ("resnet", 512)):
        body = {"images": [url, {"base64": image_base64()}], "encoder": encoder}
        embed = post(app_url, "/v1/embed/image", json=body)
        assert embed.status_code == 200, embed.text
        assert embed.json()["dim"] == dim and len(embed.json()["embeddings"]) == 2

    text = post(app_url, "/v1/embed/text", json={"texts": ["a", "b"], "profile": "accurate"})
    assert text.status_code == 200 and text.json()["model"].endswith("hf_clip")

    tag = post(app_url, "/v1/tag", json={"image": url, "labels": ["cat", "dog"], "top_k": 2})
    assert tag.status_code == 200 and len(tag.json()["tags"]) == 2

    files = {"image": ("a.jpg", image_bytes(), "image/jpeg")}
    assert post(app_url, "/v1/tag/upload", files=files).status_code == 200
    assert post(app_url, "/v1/score/upload", files=files, data={"text": "x"}).status_code == 200
    assert post(app_url, "/v1/embed/image/upload", files=files).status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "type_"),
    [("/missing", 502, "upstream_error"), ("/html", 415, "unsupported_media_type")],
)
def test_downstream_errors_reach_the_client_with_their_status(
    app_url, image_server, path, status, type_
):
    images = [{"base64": image_base64()}, {"url": image_server.base_url + path}]
    response = post(app_url, "/v1/embed/image", json={"images": images})
    assert response.status_code == status, response.text
    assert response.json()["error"] == {
        "type": type_,
        "message": response.json()["error"]["message"],
        "param": "images[1]",
        "code": None,
    }
    assert "Traceback" not in response.text


def test_concurrent_requests_are_batched(app_url):
    handle = serve.get_deployment_handle(clip_deployment_name("fast"), app_name=APP_NAME)
    before = handle.describe.remote().result()["batch_sizes"]
    bodies = [  # distinct pictures, so the embedding cache can't answer for the encoder
        {"images": [{"base64": image_base64(seed=1000 + 4 * n + i)} for i in range(4)]}
        for n in range(16)
    ]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(lambda body: post(app_url, "/v1/embed/image", json=body).status_code, bodies)
        )
    assert statuses == [200] * 16
    after = handle.describe.remote().result()["batch_sizes"]
    new_batches = {
        int(size): count - before.get(size, 0)
        for size, count in after.items()
        if count > before.get(size, 0)
    }
    assert sum(size * count for size, count in new_batches.items()) == 64
    assert max(new_batches) > 1, new_batches


def test_repeated_images_and_texts_hit_the_embedding_cache(app_url, image_server):
    handle = serve.get_deployment_handle(clip_deployment_name("fast"), app_name=APP_NAME)
    before = handle.describe.remote().result()["cache"]
    pair = {"image": {"url": f"{image_server.base_url}/img.jpg"}, "text": "a cached caption"}
    first = post(app_url, "/v1/score", json={"pairs": [pair]})
    second = post(app_url, "/v1/score", json={"pairs": [pair, pair]})
    assert first.status_code == second.status_code == 200
    assert second.json()["results"][0] == first.json()["results"][0]
    after = handle.describe.remote().result()["cache"]
    assert after["hits"] - before["hits"] >= 4  # 2 images + 2 texts in the second request
