"""The v1 API over the Ray-free local DAG: every route, the envelope, the bounds."""

from __future__ import annotations

import pytest

from tests.support.images import image_base64, image_bytes


def test_embed_text_returns_normalised_vectors(client):
    response = client.post("/v1/embed/text", json={"texts": ["a cat", "a dog"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["profile"] == "fast" and body["dim"] == 32
    assert len(body["embeddings"]) == 2
    assert response.headers["X-Clipfleet-Profile"] == "fast"
    norm = sum(value * value for value in body["embeddings"][0]) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-4)


def test_score_pairs_and_profile(client):
    image = {"base64": image_base64()}
    body = {"pairs": [{"image": image, "text": "a cat"}] * 3, "profile": "accurate"}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and response.json()["profile"] == "accurate"
    for result in results:
        assert result["clip_score"] == pytest.approx(max(100 * result["cosine"], 0), abs=1e-6)


def test_embed_image_resnet_and_upload(client):
    response = client.post(
        "/v1/embed/image", json={"images": [{"base64": image_base64()}], "encoder": "resnet"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["dim"] == 512 and response.json()["encoder"] == "resnet"
    files = [("image", ("a.png", image_bytes(fmt="PNG"), "image/png"))] * 2
    upload = client.post("/v1/embed/image/upload", files=files, data={"encoder": "clip"})
    assert upload.status_code == 200, upload.text
    assert len(upload.json()["embeddings"]) == 2


def test_tag_defaults_to_seed_labels(client):
    response = client.post("/v1/tag", json={"image": {"base64": image_base64()}, "top_k": 20})
    assert response.status_code == 200, response.text
    labels = {tag["label"] for tag in response.json()["tags"]}
    assert {"cat", "dog", "long-hair", "short-hair"} <= labels
    assert sum(tag["confidence"] for tag in response.json()["tags"]) == pytest.approx(1.0)


def test_tag_upload_with_labels(client):
    files = {"image": ("a.jpg", image_bytes(), "image/jpeg")}
    response = client.post(
        "/v1/tag/upload", files=files, data={"labels": ["car", "tree"], "top_k": "1"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["tags"]) == 1
    assert response.json()["tags"][0]["label"] in {"car", "tree"}


def test_score_upload(client):
    files = {"image": ("a.jpg", image_bytes(), "image/jpeg")}
    response = client.post("/v1/score/upload", files=files, data={"text": "a cat"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"texts": []}, 422, "texts"),
        ({"texts": ["x"], "profile": "nope"}, 422, "profile"),
        ({"texts": ["x"], "unknown": 1}, 422, "unknown"),
        ({"texts": ["x" * 1001]}, 422, "texts[0]"),
        ({"texts": ["x"] * 65}, 413, "texts"),
    ],
)
def test_bad_text_requests_use_the_envelope(client, body, status, param):
    response = client.post("/v1/embed/text", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_bad_image_names_its_index(client):
    images = [{"base64": image_base64()}, {"base64": "aGVsbG8="}]
    response = client.post("/v1/embed/image", json={"images": images})
    assert response.status_code == 415
    assert response.json()["error"]["param"] == "images[1]"


def test_invalid_json_and_unknown_route(client):
    response = client.post(
        "/v1/score", content=b"{bad", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_models_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    models = client.get("/v1/status").json()
    assert models["default_profile"] == "fast" and models["random_weights"] is False
    assert models["profiles"]["accurate"]["clip"]["stable"]["backend"] == "transformers"
    assert models["profiles"]["fast"]["clip"]["stable"]["weights"].startswith("dir:")
    assert client.get("/docs").status_code == 200


def test_bad_tag_image_points_at_image(client):
    response = client.post("/v1/tag", json={"image": {"base64": "aGVsbG8="}})
    assert response.status_code == 415
    assert response.json()["error"]["param"] == "image"
