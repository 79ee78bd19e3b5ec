"""The five seeds' drop-in routes, called as each seed's README shows (its curl examples)."""

from __future__ import annotations

import base64
import os
import sys

import pytest

from clipfleet.api.compat.common import LOCAL_IMAGE_DIR_ENV
from tests.support.images import image_bytes


def jpeg(name: str = "sample.jpg") -> tuple[str, bytes, str]:
    return (name, image_bytes(), "image/jpeg")


def norm(vector: list[float]) -> float:
    return sum(value * value for value in vector) ** 0.5


# -- seed 000: Vector Translation API ---------------------------------------------------------
def test_seed000_clip_vector_with_file_and_text(client):
    # curl -X POST /get_clip_vector -F "image_file=@sample.jpg" -F "text=fashion clothing"
    response = client.post(
        "/get_clip_vector", files={"image_file": jpeg()}, data={"text": "fashion clothing"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["vector"]) == 1 and body["vector"][0] == body["image_vector"]
    assert len(body["image_vector"]) == len(body["text_vector"]) == body["dim"] == 32
    assert norm(body["text_vector"]) == pytest.approx(1.0, abs=1e-4)
    assert body["model"]


def test_seed000_clip_vector_with_url(client, image_url):
    # curl -X POST /get_clip_vector -F "image_url=https://..." -F "text=fashion clothing"
    response = client.post(
        "/get_clip_vector", data={"image_url": image_url, "text": "fashion clothing"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["image_vector"]) == 32


def test_seed000_resnet_vector_file_and_url(client, image_url):
    upload = client.post("/get_resnet_vector", files={"image_file": jpeg()})
    by_url = client.post("/get_resnet_vector", data={"image_url": image_url})
    for response in (upload, by_url):
        assert response.status_code == 200, response.text
        assert len(response.json()["vector"][0]) == response.json()["dim"] == 512
    assert "text_vector" not in upload.json()


def test_seed000_needs_an_image(client):
    response = client.post("/get_clip_vector", data={"text": "fashion clothing"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image_file or image_url"


def test_health_is_the_union_of_seed000_and_seed003(client):
    # curl http://localhost:5000/health  and  curl http://localhost:8000/health
    response = client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert body["models"]["clip_model_loaded"] and body["models"]["resnet_model_loaded"]
    assert body["models"]["device"] == body["device"] == "cpu"
    assert body["model"] and isinstance(body["warnings"], list)
    for field in ("cpu_percent", "memory_percent", "memory_available_gb", "memory_used_gb"):
        assert isinstance(body["resources"][field], int | float)
    assert "gpu_memory_percent" in body["resources"]


def test_health_warns_about_random_weights(client, monkeypatch):
    answer = {"fast.clip": {"ready": True, "random_weights": True, "device": "cpu"}}

    async def readiness():
        return True, answer

    monkeypatch.setattr(client.app.state.service.fleet, "readiness", readiness)
    body = client.get("/health").json()
    assert any("random weights" in warning for warning in body["warnings"])
    assert body["models"]["resnet_model_loaded"] is False  # not in the patched answer


def test_health_is_503_when_not_ready(client, monkeypatch):
    async def readiness():
        return False, {"fast.clip": {"ready": False, "reason": "TimeoutError"}}

    monkeypatch.setattr(client.app.state.service.fleet, "readiness", readiness)
    for path in ("/health", "/evaluator/health"):
        response = client.get(path)
        assert response.status_code == 503 and response.json()["status"] == "unhealthy"
        assert "fast.clip is not ready" in response.json()["warnings"]


# -- seed 001: Vision-Language Similarity Service --------------------------------------------
def test_seed001_single_as_documented(client, image_url):
    request = {
        "image_input": image_url,
        "text_prompt": "A little girl wearing a red dress smiled. Play with the lovely rabbit.",
        "model_config_name": "fast",
    }
    response = client.post("/evaluator/v1/evaluation/single", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_input"] == image_url and body["text_prompt"] == request["text_prompt"]
    assert body["clip_score"] >= 0 and body["processing_time_ms"] > 0
    assert body["model_used"] == "fast" and body["model_name"]


def test_seed001_batch_as_documented(client, image_url):
    prompts = ["A girl studying with a coffee at night", "A pile of bricks on the floor"]
    evaluations = [
        {"image_input": image_url, "text_prompt": prompt, "model_config_name": "fast"}
        for prompt in [*prompts, "Cute koala bear eating bamboo in a jungle"]
    ]
    evaluations[2]["model_config_name"] = "accurate"
    response = client.post(
        "/evaluator/v1/evaluation/batch", json={"evaluations": evaluations, "batch_size": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["batch_size"] == 2 and body["total_evaluations"] == 3
    assert body["successful_evaluations"] == 3 and body["failed_evaluations"] == 0
    assert [item["model_used"] for item in body["results"]] == ["fast", "fast", "accurate"]
    assert all(item["clip_score"] is not None for item in body["results"])


def test_seed001_batch_reports_failures_per_item(client, image_url):
    evaluations = [
        {"image_input": image_url, "text_prompt": "a cat"},
        {"image_input": image_url.replace("img.jpg", "missing"), "text_prompt": "a cat"},
    ]
    body = client.post("/evaluator/v1/evaluation/batch", json={"evaluations": evaluations})
    assert body.status_code == 200, body.text
    first, second = body.json()["results"]
    assert first["clip_score"] is not None and first["error"] is None
    assert second["clip_score"] is None and "404" in second["error"]
    assert body.json()["failed_evaluations"] == 1


def test_seed001_unknown_model_config_is_422(client, image_url):
    request = {"image_input": image_url, "text_prompt": "x", "model_config_name": "huge"}
    response = client.post("/evaluator/v1/evaluation/single", json=request)
    assert response.status_code == 422


def test_seed001_health_and_metrics(client):
    evaluator = client.get("/evaluator/health")
    assert evaluator.status_code == 200 and evaluator.json()["status"] == "healthy"
    assert set(evaluator.json()["model_configs"]) == {"fast", "accurate"}
    system = client.get("/system/health")
    assert system.status_code == 200 and "cpu_percent" in system.json()["resources"]
    metrics = client.get("/evaluator/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "clipfleet_compat_evaluations_total" in metrics.text
    assert 'clipfleet_compat_traffic_weight{profile="fast",variant="stable"} 100.0' in metrics.text


# -- seed 001: local image paths --------------------------------------------------------------
def single(client, image_input: str):
    request = {"image_input": image_input, "text_prompt": "a cat"}
    return client.post("/evaluator/v1/evaluation/single", json=request)


@pytest.fixture
def image_dir(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "cat.jpg").write_bytes(image_bytes())
    (tmp_path / "secret.jpg").write_bytes(image_bytes(seed=1))
    monkeypatch.setenv(LOCAL_IMAGE_DIR_ENV, str(allowed))
    return allowed


def test_local_paths_are_off_by_default(client, tmp_path, monkeypatch):
    monkeypatch.delenv(LOCAL_IMAGE_DIR_ENV, raising=False)
    path = tmp_path / "cat.jpg"
    path.write_bytes(image_bytes())
    response = single(client, str(path))
    assert response.status_code == 400
    assert LOCAL_IMAGE_DIR_ENV in response.json()["error"]["message"]


def test_local_path_inside_the_allowed_dir_works(client, image_dir):
    for reference in ("sub/cat.jpg", str(image_dir / "sub" / "cat.jpg")):
        response = single(client, reference)
        assert response.status_code == 200, response.text
        assert response.json()["clip_score"] >= 0


@pytest.mark.parametrize("reference", ["../secret.jpg", "sub/../../secret.jpg", "SECRET_ABS"])
def test_local_path_escapes_are_refused(client, image_dir, reference):
    reference = reference.replace("SECRET_ABS", str(image_dir.parent / "secret.jpg"))
    response = single(client, reference)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "forbidden"  # as every 403 but forbidden_url


def test_local_symlink_escape_is_refused(client, image_dir):
    os.symlink(image_dir.parent / "secret.jpg", image_dir / "link.jpg")
    os.symlink(image_dir.parent, image_dir / "up")
    assert single(client, "link.jpg").status_code == 403
    assert single(client, "up/secret.jpg").status_code == 403


def test_local_missing_file_is_404(client, image_dir):
    assert single(client, "sub/none.jpg").status_code == 404


# -- seed 002: pet tagging --------------------------------------------------------------------
def test_seed002_tag_upload(client):
    response = client.post("/tag", files={"file": jpeg()})
    assert response.status_code == 200, response.text
    tags = response.json()
    assert tags and all(tag["score"] > 0.01 for tag in tags)
    assert {tag["label"] for tag in tags} <= {
        *("cat", "dog", "hamster", "rabbit", "bird", "fish", "turtle", "snake", "lizard"),
        *("long-hair", "short-hair", "medium-hair"),
    }
    scores = [tag["score"] for tag in tags]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    assert all(tag["confidence"] == tag["score"] for tag in tags)
    assert response.headers["X-Clipfleet-Model"]


def test_seed002_tag_rejects_a_non_image(client):
    response = client.post("/tag", files={"file": ("a.txt", b"hello", "text/plain")})
    assert response.status_code == 415


# -- seed 003: local CLIP embedding server ----------------------------------------------------
def test_seed003_text_and_image_as_documented(client, image_url):
    # curl -X POST /embed -d '{"input": "a happy smiling girl", "type": "text"}'
    text = client.post("/embed", json={"input": "a happy smiling girl", "type": "text"})
    # curl -X POST /embed -d '{"input": "https://example.com/image.jpg", "type": "image"}'
    image = client.post("/embed", json={"input": image_url, "type": "image"})
    for response in (text, image):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True and body["error"] is None
        assert norm(body["embedding"]) == pytest.approx(1.0, abs=1e-4)


def test_seed003_batch(client, image_url):
    texts = client.post("/embed/batch", json={"inputs": ["a", "b", "c"], "type": "text"})
    images = client.post("/embed/batch", json={"inputs": [image_url] * 2, "type": "image"})
    assert texts.json()["success"] and len(texts.json()["embeddings"]) == 3
    assert images.json()["success"] and len(images.json()["embeddings"]) == 2


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/embed", {"input": "x", "type": "audio"}),
        ("/embed", {"type": "text"}),
        ("/embed", b"{not json"),
        ("/embed", {"input": "http://127.0.0.1:9/none.jpg", "type": "image"}),
        ("/embed", {"input": "x" * 5000, "type": "text"}),
        ("/embed/batch", {"inputs": ["x"] * 65, "type": "text"}),
        ("/embed/batch", {"inputs": [], "type": "text"}),
    ],
)
def test_seed003_failures_are_200_with_success_false(client, path, payload):
    if isinstance(payload, bytes):
        response = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is False and body["error"]
    assert body.get("embedding") is None and body.get("embeddings") is None


def test_seed003_download_failure_message(client, image_url):
    response = client.post("/embed", json={"input": image_url + "x", "type": "image"})
    assert response.json()["error"].startswith("Failed to download image")


# -- seed 004: OpenCLIP embedding service -----------------------------------------------------
def test_seed004_readyz_and_text(client):
    # curl http://localhost:8000/readyz -> {"status": "ready", "model": ...}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["model"] and "deployments" in ready.json()
    # curl -X POST /embed/text -H "Content-Type: application/json" -d '{"text": "test"}'
    response = client.post("/embed/text", json={"text": "test"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["embedding"]) == 32 and body["model"] == ready.json()["model"]
    assert body["model_name"] and body["model_version"]


def test_seed004_image_multipart_and_raw_body(client):
    upload = client.post("/embed/image", files={"file": jpeg()})
    raw = client.post(
        "/embed/image", content=image_bytes(), headers={"content-type": "application/octet-stream"}
    )
    for response in (upload, raw):
        assert response.status_code == 200, response.text
        assert len(response.json()["embedding"]) == 32
    assert upload.json()["embedding"] == pytest.approx(raw.json()["embedding"], abs=1e-5)
    empty = client.post("/embed/image", content=b"")
    assert empty.status_code == 400


def test_compat_routes_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/get_clip_vector", "/evaluator/v1/evaluation/batch", "/tag", "/embed/batch"):
        assert path in paths
    assert "requestBody" in paths["/embed"]["post"]


def test_data_url_image_input(client):
    data_url = "data:image/jpeg;base64," + base64.b64encode(image_bytes()).decode()
    response = single(client, data_url)
    assert response.status_code == 200, response.text


def test_gpu_figures_when_the_process_sees_a_gpu(monkeypatch):
    from types import SimpleNamespace

    from clipfleet.api.compat.common import system_resources

    gib = 1024**3
    cuda = SimpleNamespace(
        is_available=lambda: True, mem_get_info=lambda: (6 * gib, 8 * gib), utilization=lambda: 12
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    resources = system_resources()
    assert resources["gpu_memory_used_gb"] == 2.0 and resources["gpu_memory_total_gb"] == 8.0
    assert resources["gpu_memory_percent"] == 25.0 and resources["gpu_utilization_percent"] == 12
