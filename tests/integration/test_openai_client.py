"""The official `openai` SDK against the real local Serve app: embeddings (its default base64,
floats, dimensions, images via extra_body), the model list and an unknown model."""

from __future__ import annotations

import numpy as np
import openai
import pytest
import requests

from tests.support.images import image_base64


@pytest.fixture(scope="module")
def sdk(app_url):
    with openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def native(app_url: str, path: str, body: dict) -> np.ndarray:
    response = requests.post(f"{app_url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def vectors(result) -> np.ndarray:
    return np.asarray([item.embedding for item in result.data], dtype=np.float32)


def test_openai_sdk_against_serve(sdk, app_url, image_server):
    texts = ["a photo of a cat", "a red dress"]
    expected = native(app_url, "/v1/embed/text", {"texts": texts})
    default = sdk.embeddings.create(model="fast", input=texts)  # base64 on the wire
    np.testing.assert_allclose(vectors(default), expected, atol=1e-6)
    assert default.usage.prompt_tokens > 2 * 2  # start and end tokens at least, per text
    floats = sdk.embeddings.create(model="fast/stable", input=texts, encoding_format="float")
    np.testing.assert_allclose(vectors(floats), expected, atol=1e-6)
    short = sdk.embeddings.create(model="fast", input=texts, dimensions=8)
    head = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors(short), head, atol=1e-6)

    url = f"{image_server.base_url}/img.jpg"
    inputs = [url, "data:image/jpeg;base64," + image_base64()]
    images = sdk.embeddings.create(model="fast", input=inputs, extra_body={"modality": "image"})
    refs = [{"url": url}, {"base64": image_base64()}]
    np.testing.assert_allclose(
        vectors(images), native(app_url, "/v1/embed/image", {"images": refs}), atol=1e-6
    )

    ids = {model.id for model in sdk.models.list()}
    assert {"fast", "fast/stable", "accurate", "accurate/stable"} <= ids
    assert sdk.models.retrieve("fast/stable").model_dump()["clip"]["stable"]["embed_dim"] == 32
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model="text-embedding-3-small", input="a cat")
    assert raised.value.code == "model_not_found"
