"""Rerank and pair scores in the peers' shapes, over the Ray-free local DAG: the `cohere` SDK
(v2 and v1 rerank), LangChain's Cohere reranker, and HTTP for Jina's and vLLM's shapes; images
on either side, the model's own scores (ordered as /v1/score orders them), the same limits."""

from __future__ import annotations

import cohere
import numpy as np
import pytest
from langchain_classic.retrievers.document_compressors.cohere_rerank import CohereRerank
from langchain_core.documents import Document

from tests.support.images import image_base64
from tests.support.peer_clients import cohere_over, data_url

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout'")
DOCUMENTS = ["a photo of a cat", "a red dress", "a city at night", "two dogs", "a bowl of soup"]


def post(client, path: str, body: dict, status: int = 200) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def score_cosines(client, image: str, texts: list[str], profile: str = "fast") -> list[float]:
    """/v1/score's cosine of (image, text) for each text."""
    pairs = [{"image": {"base64": image}, "text": text} for text in texts]
    found = post(client, "/v1/score", {"pairs": pairs, "profile": profile})["results"]
    return [result["cosine"] for result in found]


def ranked(cosines: list[float]) -> list[int]:
    return sorted(range(len(cosines)), key=lambda index: -cosines[index])


@pytest.mark.parametrize("profile", ["fast", "accurate"])
def test_sdk_image_query_over_text_documents_orders_as_v1_score(client, profile):
    image = image_base64(seed=3)
    result = cohere_over(client).rerank(
        model=profile, query="data:image/jpeg;base64," + image, documents=DOCUMENTS
    )
    cosines = score_cosines(client, image, DOCUMENTS, profile)
    assert [item.index for item in result.results] == ranked(cosines)
    for item in result.results:
        assert item.relevance_score == pytest.approx(cosines[item.index], abs=1e-5)
    assert (result.model_extra or {})["activation"] == "softmax"


def test_sdk_top_n_and_text_query_over_image_documents(client):
    images = [data_url(seed) for seed in range(4)]
    result = cohere_over(client).rerank(model="fast", query="a cat", documents=images, top_n=2)
    assert len(result.results) == 2
    full = cohere_over(client).rerank(model="fast", query="a cat", documents=images)
    assert [r.index for r in result.results] == [r.index for r in full.results][:2]
    scores = [r.relevance_score for r in full.results]
    assert scores == sorted(scores, reverse=True)


def test_v1_client_rerank_returns_documents_and_ranks_fields(client):
    v1 = cohere.Client(
        api_key="unused", base_url=str(client.base_url), httpx_client=client, max_retries=0
    )
    documents = [{"title": "Cats", "text": "a photo of a cat"}, {"title": "Soup", "text": "soup"}]
    result = v1.rerank(
        model="fast",
        query="a cat",
        documents=documents,
        rank_fields=["title", "text"],
        return_documents=True,
    )
    assert sorted(item.index for item in result.results) == [0, 1]
    for item in result.results:
        assert item.document.text == documents[item.index]["text"]


def test_langchain_cohere_reranker(client):
    """LangChain's CohereRerank (langchain-classic; langchain-cohere pins cohere<6) with a
    cohere client pointed at clipfleet."""
    v1 = cohere.Client(
        api_key="unused", base_url=str(client.base_url), httpx_client=client, max_retries=0
    )
    reranker = CohereRerank(client=v1, model="fast", top_n=3)
    documents = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(DOCUMENTS)]
    kept = reranker.compress_documents(documents, "a photo of a cat")
    assert len(kept) == 3
    scores = [doc.metadata["relevance_score"] for doc in kept]
    assert scores == sorted(scores, reverse=True)
    expected = post(
        client,
        "/v1/rerank",
        {"model": "fast", "query": "a photo of a cat", "documents": DOCUMENTS, "top_n": 3},
    )
    assert [doc.metadata["n"] for doc in kept] == [r["index"] for r in expected["results"]]


def test_jina_shape_with_image_and_text_documents(client):
    body = {
        "model": "fast",
        "query": "a cat",
        "documents": [{"image": data_url(1)}, {"text": "a cat on a sofa"}, "a red dress"],
        "top_n": 3,
        "return_documents": True,
    }
    answer = post(client, "/v1/rerank", body)
    assert answer["model"] == "fast/stable" and answer["usage"]["total_tokens"] > 0
    echoed = {result["index"]: result["document"] for result in answer["results"]}
    assert echoed == {
        0: {"image": data_url(1)},
        1: {"text": "a cat on a sofa"},
        2: {"text": "a red dress"},
    }
    card = client.get("/v1/models/fast").json()["clip"]["stable"]
    assert answer["embedding_space"] == card["embedding_space"]


def test_vllm_score_one_to_many_and_pairwise(client):
    image = image_base64(seed=5)
    one_to_many = post(
        client,
        "/score",
        {"model": "fast", "text_1": "data:image/jpeg;base64," + image, "text_2": DOCUMENTS},
    )
    cosines = score_cosines(client, image, DOCUMENTS)
    got = [item["score"] for item in one_to_many["data"]]
    np.testing.assert_allclose(got, cosines, atol=1e-5)
    assert one_to_many["object"] == "list" and one_to_many["data"][0]["object"] == "score"
    pairwise = post(
        client,
        "/v1/score",
        {"model": "fast", "queries": DOCUMENTS[:2], "documents": DOCUMENTS[2:4]},
    )
    assert [item["index"] for item in pairwise["data"]] == [0, 1]
    again = post(client, "/score", {"data_1": DOCUMENTS[1], "data_2": [DOCUMENTS[3]]})
    assert again["data"][0]["score"] == pytest.approx(pairwise["data"][1]["score"], abs=1e-5)
    parts = {
        "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + image}}]
    }
    multimodal = post(client, "/score", {"text_1": DOCUMENTS[0], "text_2": parts})
    assert multimodal["data"][0]["score"] == pytest.approx(cosines[0], abs=1e-5)


def test_v1_score_keeps_its_pairs_body(client):
    answer = post(
        client, "/v1/score", {"pairs": [{"image": {"base64": image_base64()}, "text": "a"}]}
    )
    assert set(answer) >= {"results", "profile", "variant", "model", "activation"}
    wrong = post(client, "/v1/score", {"pairs": [{"image": {}, "text": "a"}]}, 422)
    assert wrong["error"]["param"] == "pairs[0].image"


def test_vllm_rerank_with_multimodal_documents(client):
    documents = {
        "content": [
            {"type": "text", "text": "a cat"},
            {"type": "image_url", "image_url": {"url": data_url(2)}},
        ]
    }
    answer = post(client, "/rerank", {"model": "fast", "query": "a cat", "documents": documents})
    assert sorted(result["index"] for result in answer["results"]) == [0, 1]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/rerank", {"query": "q", "documents": ["d"] * 65}, 413, "documents"),
        ("/v2/rerank", {"query": "q", "documents": ["d", "x" * 1001]}, 422, "documents[1]"),
        ("/v2/rerank", {"query": "x" * 1001, "documents": ["d"]}, 422, "query"),
        ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["d"]}, 404, "model"),
        ("/v1/rerank", {"query": "q", "documents": [3]}, 422, "documents[0]"),
        ("/v1/rerank", {"query": "q", "documents": [{"title": "t"}]}, 422, "documents[0]"),
        ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 422, "text_1"),
        ("/score", {"text_1": "a"}, 422, None),
        ("/score", {"text_1": "a", "text_2": ["b"] * 65}, 413, "text_2"),
        ("/v1/score", {"text_1": 3, "text_2": "b"}, 422, "text_1"),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["https://127.0.0.1:1/a.jpg"]},  # auto: an image
            403,
            "documents[0]",
        ),
    ],
)
def test_limits_and_errors_use_the_envelope(client, path, body, status, param):
    error = post(client, path, body, status)["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["param"] == param, error
