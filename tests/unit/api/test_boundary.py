"""The typed service boundary, over the app and the Ray-free local DAG: each route resolves its
target once (and the headers name it, on errors too), the service hands back arrays, and the
API encodes each response's vectors once, from the result's own array."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from clipfleet.api import encoding
from clipfleet.ingress.results import Embeddings
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.targets import Target, Targets
from tests.support.images import image_base64

IMAGE = {"base64": image_base64()}
IMAGE_PART = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image_base64()}"}}
REQUESTS = [
    ("/v1/embed/text", {"texts": ["a cat"], "profile": "accurate"}),
    ("/v1/embed/text", {"texts": ["a cat"], "model": "fast/stable"}),
    ("/v1/embed/image", {"images": [IMAGE], "encoder": "resnet"}),
    ("/v1/embed/image", {"images": [IMAGE, IMAGE]}),
    ("/v1/score", {"pairs": [{"image": IMAGE, "text": "a cat"}]}),
    ("/v1/tag", {"image": IMAGE, "labels": ["cat", "dog"]}),
    ("/v1/embeddings", {"model": "accurate", "input": ["a cat", "a dog"]}),
    ("/v2/embed", {"model": "fast", "texts": ["a cat"], "embedding_types": ["float", "int8"]}),
    ("/v1/rerank", {"model": "fast", "query": "a cat", "documents": ["a", "b"]}),
    ("/score", {"model": "fast", "text_1": "a cat", "text_2": ["a", "b"]}),
]


@pytest.fixture
def resolutions(monkeypatch) -> list[Target]:
    """Every target Targets.resolve worked out (a target handed back as it is doesn't count)."""
    found: list[Target] = []
    resolve = Targets.resolve

    def counted(self, profile_name, routing=None, encoder="clip"):
        target = resolve(self, profile_name, routing, encoder)
        if target is not routing:
            found.append(target)
        return target

    monkeypatch.setattr(Targets, "resolve", counted)
    return found


@pytest.mark.parametrize(("path", "body"), REQUESTS)
def test_each_request_is_resolved_once_and_its_headers_name_the_target(
    client, resolutions, path, body
):
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert len(resolutions) == 1, resolutions
    target = resolutions[0]
    assert response.headers["X-Clipfleet-Profile"] == target.profile.name
    assert response.headers["X-Clipfleet-Variant"] == target.variant
    answer = response.json()
    if "profile" in answer:  # the v1 bodies name what served them
        assert (answer["profile"], answer["variant"], answer["model"]) == (
            target.profile.name,
            target.variant,
            target.model,
        )
    elif "model" in answer:  # the peers' bodies: <profile>/<variant>
        assert answer["model"] == target.served_id


def test_an_error_after_resolution_names_its_target_in_the_headers(client, resolutions):
    body = {"images": [{"url": "http://127.0.0.1:9/missing.jpg"}], "profile": "accurate"}
    response = client.post("/v1/embed/image", json=body)
    assert response.status_code >= 400 and response.json()["error"]["param"] == "images[0]"
    assert len(resolutions) == 1
    assert response.headers["X-Clipfleet-Profile"] == "accurate"
    assert response.headers["X-Clipfleet-Variant"] == "stable"


def test_an_unresolved_request_names_no_target(client):
    response = client.post("/v1/embed/text", json={"texts": ["a"], "profile": "nope"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "profile"
    assert "X-Clipfleet-Profile" not in response.headers


@pytest.fixture
def encoded(monkeypatch) -> list[np.ndarray]:
    """Each matrix the API encoded for the wire."""
    seen: list[np.ndarray] = []
    encode_all = encoding.encode_all

    def counted(matrix, kinds, limit, full_dim):
        seen.append(matrix)
        return encode_all(matrix, kinds, limit, full_dim)

    monkeypatch.setattr(encoding, "encode_all", counted)
    return seen


@pytest.fixture
def results(monkeypatch) -> list[Embeddings]:
    """What the service's embedding operations returned."""
    found: list[Embeddings] = []
    for name in ("embed_texts", "embed_images", "embed_items"):
        operation = getattr(ClipfleetService, name)

        async def recorded(self, *args, _operation=operation, **kwargs):
            result = await _operation(self, *args, **kwargs)
            found.append(result)
            return result

        monkeypatch.setattr(ClipfleetService, name, recorded)
    return found


@pytest.mark.parametrize(
    ("path", "body", "rows"),
    [
        ("/v1/embed/text", {"texts": ["a cat", "a dog"]}, lambda a: a["embeddings"]),
        ("/v1/embed/image", {"images": [IMAGE]}, lambda a: a["embeddings"]),
        (
            "/v1/embeddings",
            {"model": "fast", "input": ["a cat", IMAGE_PART], "encoding_format": "float"},
            lambda a: [row["embedding"] for row in a["data"]],
        ),
        ("/v2/embed", {"model": "fast", "texts": ["a cat"]}, lambda a: a["embeddings"]["float"]),
    ],
)
def test_vectors_are_encoded_once_from_the_results_array(
    client, encoded, results, path, body, rows
):
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert len(results) == 1 and len(encoded) == 1
    vectors = results[0].vectors
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32
    assert encoded[0] is vectors  # not a copy rebuilt from lists
    assert rows(response.json()) == vectors.tolist()


def test_base64_is_the_arrays_own_bytes(client, encoded, results):
    body = {"texts": ["a cat"], "encoding_format": "base64"}
    answer = client.post("/v1/embed/text", json=body).json()
    assert len(encoded) == 1 and encoded[0] is results[0].vectors
    decoded = np.frombuffer(base64.b64decode(answer["embeddings"][0]), "<f4")
    np.testing.assert_array_equal(decoded, results[0].vectors[0])


def test_the_replaced_services_get_the_arrays_floats(client, results):
    """The compat routes answer the array's floats as computed (no float32 round trip)."""
    answer = client.post("/embed/text", json={"text": "a cat"}).json()
    assert answer["embedding"] == results[0].vectors[0].tolist()
