"""The peers' shapes against the real local Serve app: the `cohere` SDK's embed (every type)
and rerank (an image query, ordered as /v1/score orders), vLLM's messages and /score, and the
embedding_space of the model card on every answer (issue 24)."""

from __future__ import annotations

import cohere
import numpy as np
import requests

from tests.support.images import image_base64

TEXTS = ["a photo of a cat", "a red dress", "a city at night", "two dogs"]


def post(app_url: str, path: str, body: dict) -> dict:
    response = requests.post(f"{app_url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_peer_shapes_against_serve(app_url):
    card = requests.get(f"{app_url}/v1/models/fast", timeout=30).json()["clip"]["stable"]
    space = card["embedding_space"]
    co = cohere.ClientV2(api_key="unused", base_url=app_url, max_retries=0, timeout=60)

    result = co.embed(
        model="fast",
        input_type="search_document",
        texts=TEXTS,
        embedding_types=["float", "int8", "ubinary"],
    )
    expected = post(app_url, "/v1/embed/text", {"texts": TEXTS})
    assert expected["embedding_space"] == space == result.model_extra["embedding_space"]
    floats = np.asarray(result.embeddings.float_, np.float32)
    np.testing.assert_allclose(floats, expected["embeddings"], atol=1e-6)
    limit = card["quantization"]["int8_limit"]
    assert np.abs(np.asarray(result.embeddings.int8) - np.round(floats * 127 / limit)).max() <= 1
    np.testing.assert_array_equal(result.embeddings.ubinary, np.packbits(floats > 0, axis=1))

    image = image_base64(seed=4)
    ranked = co.rerank(model="fast", query="data:image/jpeg;base64," + image, documents=TEXTS)
    pairs = [{"image": {"base64": image}, "text": text} for text in TEXTS]
    cosines = [r["cosine"] for r in post(app_url, "/v1/score", {"pairs": pairs})["results"]]
    assert [item.index for item in ranked.results] == sorted(
        range(len(TEXTS)), key=lambda index: -cosines[index]
    )

    message = {"role": "user", "content": [{"type": "text", "text": TEXTS[0]}]}
    chat = post(app_url, "/v1/embeddings", {"model": "fast", "messages": [message]})
    np.testing.assert_allclose(chat["data"][0]["embedding"], floats[0], atol=1e-6)
    scored = post(app_url, "/score", {"model": "fast", "text_1": TEXTS[0], "text_2": TEXTS[1:]})
    assert len(scored["data"]) == 3 and scored["embedding_space"] == space
