"""Score semantics on hand-built vectors (random weights say nothing about which label is near
an image), then through the v1 and seed 002 routes with a SigLIP profile."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from clipfleet.config import ClipModelSpec, ProfileSpec
from clipfleet.scoring import ScoreSemantics, clip_scores, relevance_scores, zero_shot
from tests.support.images import image_base64, image_bytes
from tests.support.local_dag import build_local_service, tiny_app_args
from tests.support.tiny_models import make_open_clip_siglip_dir

IMAGE = np.array([1.0, 0.0, 0.0])
# cosines with IMAGE: 1.0, 0.8, 0.6, -1.0
LABEL_VECTORS = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.8, 0.0], [-1.0, 0.0, 0.0]])
LABELS = ["cat", "kitten", "tiger", "car"]
SCALE, BIAS = 10.0, -7.0


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def test_sigmoid_tags_are_independent_per_label_and_multi_label():
    tags = zero_shot(IMAGE, LABEL_VECTORS, LABELS, SCALE, 4, "sigmoid", BIAS)
    # sigmoid(10*cos - 7): 0.953, 0.731, 0.269, ~0 -> the two above 0.5, best first
    assert [tag["label"] for tag in tags] == ["cat", "kitten"]
    assert tags[0]["confidence"] == pytest.approx(sigmoid(SCALE * 1.0 + BIAS))
    assert tags[1]["confidence"] == pytest.approx(sigmoid(SCALE * 0.8 + BIAS))
    assert sum(tag["confidence"] for tag in tags) != pytest.approx(1.0)
    # independent: the other labels don't change a label's probability
    alone = zero_shot(IMAGE, LABEL_VECTORS[:1], LABELS[:1], SCALE, 4, "sigmoid", BIAS)
    assert alone[0]["confidence"] == pytest.approx(tags[0]["confidence"])


def test_sigmoid_threshold_and_top_k():
    every = zero_shot(IMAGE, LABEL_VECTORS, LABELS, SCALE, 4, "sigmoid", BIAS, threshold=0.0)
    assert [tag["label"] for tag in every] == LABELS
    assert len(zero_shot(IMAGE, LABEL_VECTORS, LABELS, SCALE, 1, "sigmoid", BIAS)) == 1
    assert zero_shot(IMAGE, LABEL_VECTORS, LABELS, SCALE, 4, "sigmoid", -20.0) == []  # none apply


def test_softmax_tags_sum_to_one_and_depend_on_the_label_set():
    tags = zero_shot(IMAGE, LABEL_VECTORS, LABELS, SCALE, 4)
    assert [tag["label"] for tag in tags] == LABELS
    assert sum(tag["confidence"] for tag in tags) == pytest.approx(1.0)
    alone = zero_shot(IMAGE, LABEL_VECTORS[:1], LABELS[:1], SCALE, 4)
    assert alone[0]["confidence"] == pytest.approx(1.0) != tags[0]["confidence"]


def test_scores_keep_clip_score_and_add_sigmoid_probability():
    texts = LABEL_VECTORS[:2]
    images = np.stack([IMAGE, IMAGE])
    plain = clip_scores(images, texts)
    assert "probability" not in plain[0]
    siglip = clip_scores(images, texts, ScoreSemantics("sigmoid", SCALE, BIAS))
    assert siglip[1]["clip_score"] == pytest.approx(80.0) == plain[1]["clip_score"]
    assert siglip[1]["probability"] == pytest.approx(sigmoid(SCALE * 0.8 + BIAS))


def test_relevance_is_the_models_own_score_and_orders_as_the_cosine():
    queries = np.repeat(IMAGE[None], 4, axis=0)
    cosines = [1.0, 0.8, 0.6, -1.0]
    clip = relevance_scores(queries, LABEL_VECTORS, ScoreSemantics())
    assert clip == pytest.approx(cosines)
    siglip = relevance_scores(queries, LABEL_VECTORS, ScoreSemantics("sigmoid", SCALE, BIAS))
    assert siglip == pytest.approx([sigmoid(SCALE * c + BIAS) for c in cosines])
    assert np.argsort(siglip).tolist() == np.argsort(clip).tolist()


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation"):
        zero_shot(IMAGE, LABEL_VECTORS, LABELS, SCALE, 4, "relu")


# -- through the routes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def siglip_client(model_dir, tmp_path_factory):
    # a large bias puts every label above 0.5, so multi-label answers are visible
    folder = tmp_path_factory.mktemp("siglip") / "open_clip"
    make_open_clip_siglip_dir(folder, logit_bias=30.0)
    args = tiny_app_args(model_dir)
    siglip = ProfileSpec(
        clip=ClipModelSpec(model=f"local-dir:{folder}"), resnet=args.profiles["fast"].resnet
    )
    # seed 002 maps to `fast`: make it the SigLIP one here
    args = args.model_copy(update={"profiles": {**args.profiles, "fast": siglip}})
    with TestClient(create_app(build_local_service(args))) as client:
        yield client


def test_v1_tag_says_sigmoid(siglip_client):
    body = {"image": {"base64": image_base64()}, "labels": ["a", "b", "c"]}
    response = siglip_client.post("/v1/tag", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["activation"] == "sigmoid"
    tags = response.json()["tags"]
    assert len(tags) == 3 and all(0.5 <= tag["confidence"] <= 1 for tag in tags)
    top_one = siglip_client.post("/v1/tag", json={**body, "top_k": 1})
    assert len(top_one.json()["tags"]) == 1
    none = siglip_client.post("/v1/tag", json={**body, "threshold": 1.0})
    assert none.json()["tags"] == [] or none.json()["tags"][0]["confidence"] == 1.0
    accurate = siglip_client.post("/v1/tag", json={**body, "profile": "accurate"})
    assert accurate.json()["activation"] == "softmax"


def test_v1_tag_threshold_bounds(siglip_client):
    body = {"image": {"base64": image_base64()}, "threshold": 1.5}
    assert siglip_client.post("/v1/tag", json=body).status_code == 422


def test_v1_score_adds_probability_for_sigmoid(siglip_client):
    pair = {"image": {"base64": image_base64()}, "text": "a cat"}
    response = siglip_client.post("/v1/score", json={"pairs": [pair]})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert response.json()["activation"] == "sigmoid" and 0 < result["probability"] < 1
    assert result["clip_score"] == pytest.approx(max(100 * result["cosine"], 0), abs=1e-6)
    other = siglip_client.post("/v1/score", json={"pairs": [pair], "profile": "accurate"})
    assert other.json()["results"][0]["probability"] is None


def test_rerank_relevance_is_the_sigmoid_probability_of_v1_score(siglip_client):
    texts = ["a cat", "a dog", "a red car"]
    pairs = [{"image": {"base64": image_base64()}, "text": text} for text in texts]
    scored = siglip_client.post("/v1/score", json={"pairs": pairs}).json()["results"]
    query = "data:image/jpeg;base64," + image_base64()
    body = {"model": "fast", "query": query, "documents": texts}
    answer = siglip_client.post("/v2/rerank", json=body).json()
    assert answer["activation"] == "sigmoid"
    for result in answer["results"]:
        expected = scored[result["index"]]["probability"]
        assert result["relevance_score"] == pytest.approx(expected, abs=1e-6)


def test_seed002_items_carry_their_activation(siglip_client):
    files = {"file": ("a.jpg", image_bytes(), "image/jpeg")}
    response = siglip_client.post("/tag", files=files)
    assert response.status_code == 200, response.text
    items = response.json()
    assert isinstance(items, list) and len(items) == 12  # the seed's bare list; every label
    assert all(item["activation"] == "sigmoid" for item in items)
    assert sum(item["score"] for item in items) > 1.5  # independent, not one distribution
