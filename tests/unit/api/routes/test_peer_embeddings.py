"""`POST /v1/embeddings` in the peers' shapes: vLLM's `messages` and content parts, NV-CLIP's
mixed lists (`modality: auto`), LangChain's OpenAIEmbeddings; every answer names its
embedding_space, and the vectors are /v1/embed/*'s."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_openai import OpenAIEmbeddings

from clipfleet.api.schemas.content_parts import is_image_reference
from tests.support.images import image_base64
from tests.support.peer_clients import data_url, native, sdk_over, vectors


def embeddings(client, body: dict, status: int = 200) -> dict:
    response = client.post("/v1/embeddings", json={"model": "fast", **body})
    assert response.status_code == status, response.text
    return response.json()


def rows(answer: dict) -> np.ndarray:
    return np.asarray([item["embedding"] for item in answer["data"]], np.float32)


@pytest.mark.parametrize(
    ("text", "image"),
    [
        ("data:image/png;base64,iVBOR", True),
        ("DATA:IMAGE/jpeg;base64,/9j/", True),
        ("https://example.com/cat.JPG", True),
        ("http://example.com/a/b.webp?size=large#x", True),
        ("https://example.com/cat.jpg.html", False),
        ("https://example.com/page", False),
        ("https://example.com/a cat.jpg", False),
        ("a photo of a cat.jpg", False),
        ("data:text/plain;base64,aGk=", False),
        ("ftp://example.com/cat.jpg", False),
    ],
)
def test_the_auto_rule(text, image):
    assert is_image_reference(text) is image


def test_vllm_messages_make_one_vector(client):
    texts, space = native(client, "/v1/embed/text", {"texts": ["a photo of a cat"]})
    parts = [{"type": "text", "text": "a photo"}, {"type": "text", "text": "of a cat"}]
    answer = embeddings(client, {"messages": [{"role": "user", "content": parts}]})
    assert len(answer["data"]) == 1 and answer["embedding_space"] == space
    np.testing.assert_allclose(rows(answer), texts, atol=1e-6)
    plain = embeddings(client, {"messages": [{"role": "user", "content": "a photo of a cat"}]})
    np.testing.assert_allclose(rows(plain), texts, atol=1e-6)
    image = [{"type": "image_url", "image_url": {"url": data_url(0)}}]
    picture = embeddings(client, {"messages": [{"role": "user", "content": image}]})
    expected, _ = native(client, "/v1/embed/image", {"images": [{"base64": data_url(0)}]})
    np.testing.assert_allclose(rows(picture), expected, atol=1e-6)
    assert picture["usage"]["prompt_tokens"] == 0


def test_content_parts_and_auto_lists_give_one_vector_each_in_order(client):
    images, _ = native(
        client, "/v1/embed/image", {"images": [{"base64": data_url(s)} for s in (0, 1)]}
    )
    texts, _ = native(client, "/v1/embed/text", {"texts": ["a cat", "a dog"]})
    mixed = [
        "a cat",
        data_url(0),
        {"type": "image_url", "image_url": {"url": data_url(1)}},
        {"type": "text", "text": "a dog"},
    ]
    answer = embeddings(client, {"input": mixed, "modality": "auto"})
    np.testing.assert_allclose(rows(answer), [texts[0], images[0], images[1], texts[1]], atol=1e-6)
    assert answer["usage"]["prompt_tokens"] > 0
    # without `auto`, strings stay text (OpenAI's meaning); parts are explicit either way
    url = "https://example.com/cat.jpg"
    as_text = embeddings(client, {"input": [url, mixed[2]]})
    np.testing.assert_allclose(
        rows(as_text)[0], native(client, "/v1/embed/text", {"texts": [url]})[0][0], atol=1e-6
    )
    np.testing.assert_allclose(rows(as_text)[1], images[1], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x", "messages": [{"content": "y"}]}, 422, None),
        ({}, 422, None),
        (
            {
                "messages": [
                    {
                        "content": [
                            {"type": "text", "text": "a cat"},
                            {"type": "image_url", "image_url": {"url": data_url(0)}},
                        ]
                    }
                ]
            },
            422,
            "messages",
        ),
        ({"input": [{"type": "video", "url": "x"}]}, 422, "input[0]"),
        ({"input": ["ok", {"type": "text", "text": "x" * 1001}]}, 422, "input[1]"),
        ({"input": ["https://127.0.0.1:1/a.png"], "modality": "auto"}, 403, "input[0]"),
        ({"input": [{"type": "text", "text": "x"}] * 65}, 413, "input"),
    ],
)
def test_bad_shapes_use_the_envelope(client, body, status, param):
    error = embeddings(client, body, status)["error"]
    assert error["param"] == param, error


def test_openai_sdk_sees_the_space_and_sends_parts(client):
    sdk = sdk_over(client)
    result = sdk.embeddings.create(
        model="fast",
        input=["a cat", data_url(2)],
        extra_body={"modality": "auto"},
    )
    image, space = native(client, "/v1/embed/image", {"images": [{"base64": data_url(2)}]})
    np.testing.assert_allclose(vectors(result)[1], image[0], atol=1e-6)
    assert (result.model_extra or {})["embedding_space"] == space


def test_langchain_openai_embeddings(client):
    """LangChain's OpenAIEmbeddings as docs/openai.md configures it, sending through the app."""
    lc = OpenAIEmbeddings(
        model="fast",
        base_url=f"{client.base_url}/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
        chunk_size=2,
        max_retries=0,
        http_client=client,
    )
    texts = ["a photo of a cat", "a red dress", "a city at night"]
    expected, _ = native(client, "/v1/embed/text", {"texts": texts})
    np.testing.assert_allclose(lc.embed_documents(texts), expected, atol=1e-6)
    np.testing.assert_allclose(lc.embed_query(texts[0]), expected[0], atol=1e-6)


def test_image_url_through_messages_uses_the_fetcher(client, image_url):
    answer = embeddings(
        client,
        {"messages": [{"content": [{"type": "image_url", "image_url": {"url": image_url}}]}]},
    )
    expected, _ = native(client, "/v1/embed/image", {"images": [{"url": image_url}]})
    np.testing.assert_allclose(rows(answer), expected, atol=1e-6)


def test_data_urls_of_every_kind_decode(client):
    png = "data:image/png;base64," + image_base64(fmt="PNG")
    answer = embeddings(client, {"input": [png], "modality": "auto"})
    assert len(answer["data"]) == 1
