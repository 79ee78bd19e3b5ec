"""Cohere's `POST /v2/embed` through the official `cohere` SDK (`ClientV2(base_url=...)`), over
the Ray-free local DAG: texts, images and content-part inputs, every embedding type, the same
vectors as /v1/embed/*, the int8 range of the model's card, and the SDK's errors."""

from __future__ import annotations

import base64

import cohere
import numpy as np
import pytest
from cohere.core.api_error import ApiError

from tests.support.peer_clients import cohere_over, data_url, native
from tests.support.vectors import formula_int8, sign_bits

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the .timeout.")
TEXTS = ["a photo of a cat", "a red dress", "a city at night"]
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def co(client):
    return cohere_over(client)


def card(client, model: str = "fast") -> dict:
    return client.get(f"/v1/models/{model}").json()["clip"]["stable"]


def test_texts_every_embedding_type(co, client):
    result = co.embed(
        model="fast", input_type="search_document", texts=TEXTS, embedding_types=TYPES
    )
    expected, space = native(client, "/v1/embed/text", {"texts": TEXTS})
    floats = np.asarray(result.embeddings.float_, np.float32)
    np.testing.assert_allclose(floats, expected, atol=1e-6)
    limit = card(client)["quantization"]["int8_limit"]
    assert np.abs(np.asarray(result.embeddings.int8) - formula_int8(floats, limit)).max() <= 1
    np.testing.assert_array_equal(
        np.asarray(result.embeddings.uint8), np.asarray(result.embeddings.int8) + 128
    )
    np.testing.assert_array_equal(result.embeddings.ubinary, sign_bits(floats))
    np.testing.assert_array_equal(np.asarray(result.embeddings.binary) + 128, sign_bits(floats))
    decoded = [np.frombuffer(base64.b64decode(row), "<f4") for row in result.embeddings.base64]
    np.testing.assert_array_equal(np.stack(decoded), floats)
    assert result.texts == TEXTS and result.response_type == "embeddings_by_type"
    assert result.meta.billed_units.input_tokens > len(TEXTS)
    extra = result.model_extra or {}
    assert extra["embedding_space"] == space == card(client)["embedding_space"]
    assert extra["model"] == "fast/stable"


def test_images_and_content_part_inputs_equal_embed_image(co, client):
    images = [data_url(0), data_url(1)]
    expected, _ = native(client, "/v1/embed/image", {"images": [{"base64": u} for u in images]})
    result = co.embed(model="fast", input_type="image", images=images, embedding_types=["float"])
    np.testing.assert_allclose(result.embeddings.float_, expected, atol=1e-6)
    assert result.meta.billed_units.images == 2
    inputs = [
        {"content": [{"type": "image_url", "image_url": {"url": images[0]}}]},
        {"content": [{"type": "text", "text": "a photo"}, {"type": "text", "text": "of a cat"}]},
    ]
    mixed = co.embed(model="fast", input_type="search_document", inputs=inputs)
    text, _ = native(client, "/v1/embed/text", {"texts": ["a photo of a cat"]})
    np.testing.assert_allclose(mixed.embeddings.float_[0], expected[0], atol=1e-6)
    np.testing.assert_allclose(mixed.embeddings.float_[1], text[0], atol=1e-6)


def test_output_dimension_truncates_and_renormalises(co, client):
    result = co.embed(
        model="accurate",
        input_type="search_query",
        texts=TEXTS,
        output_dimension=16,
        embedding_types=["float", "int8"],
    )
    full, _ = native(client, "/v1/embed/text", {"texts": TEXTS, "profile": "accurate"})
    head = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(result.embeddings.float_, head, atol=1e-6)
    limit = card(client, "accurate")["quantization"]["int8_limit"] * np.sqrt(32 / 16)
    assert np.abs(np.asarray(result.embeddings.int8) - formula_int8(head, limit)).max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "nope", "texts": ["x"]}, cohere.NotFoundError, "model"),
        ({"model": "fast", "texts": ["x" * 1001]}, cohere.UnprocessableEntityError, "texts[0]"),
        (
            {"model": "fast", "texts": ["x"], "truncate": "START"},
            cohere.UnprocessableEntityError,
            "truncate",
        ),
        (
            {"model": "fast", "texts": ["x"], "output_dimension": 64},
            cohere.UnprocessableEntityError,
            "output_dimension",
        ),
        (
            {"model": "fast", "images": ["/etc/passwd"]},
            cohere.UnprocessableEntityError,
            "images[0]",
        ),
        (
            {
                "model": "fast",
                "inputs": [
                    {
                        "content": [
                            {"type": "text", "text": "a cat"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        ]
                    }
                ],
            },
            cohere.UnprocessableEntityError,
            "inputs[0]",
        ),
    ],
)
def test_errors_reach_the_sdk_as_its_own_exceptions(co, kwargs, error, param):
    with pytest.raises(error) as raised:
        co.embed(input_type="search_query", **kwargs)
    assert raised.value.body["error"]["param"] == param


def test_limits_apply_before_the_work(co):
    with pytest.raises(ApiError) as raised:
        co.embed(model="fast", input_type="search_query", texts=["x"] * 65)
    assert raised.value.status_code == 413
    assert raised.value.body["error"]["param"] == "texts"
