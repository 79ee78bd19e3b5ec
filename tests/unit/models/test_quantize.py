"""Compressed vectors (clipfleet.models.quantize): sign bits and the documented int8 formula, also
on /v1/embed/text and /v1/embed/image, with the range each model publishes on its card."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipfleet.models.calibration import CALIBRATION_PROMPTS, calibration_images
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.quantize import calibration_limit, encode_all, limit_for
from tests.support.images import image_base64
from tests.support.vectors import formula_int8, sign_bits

RNG = np.random.default_rng(24)


def unit_rows(count: int, dim: int) -> np.ndarray:
    rows = RNG.normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("dim", [32, 12, 512])
def test_binary_is_the_sign_bits_and_int8_the_formula(dim):
    matrix = unit_rows(5, dim)
    limit = 0.3
    out = encode_all(matrix, ["ubinary", "binary", "int8", "uint8", "float"], limit, dim)
    np.testing.assert_array_equal(out["ubinary"], sign_bits(matrix))
    np.testing.assert_array_equal(np.asarray(out["binary"]) + 128, sign_bits(matrix))
    assert len(out["binary"][0]) == math.ceil(dim / 8)
    assert np.abs(np.asarray(out["int8"]) - formula_int8(matrix, limit)).max() <= 1
    assert np.asarray(out["int8"]).min() >= -128 and np.asarray(out["int8"]).max() <= 127
    np.testing.assert_array_equal(np.asarray(out["uint8"]), np.asarray(out["int8"]) + 128)
    np.testing.assert_array_equal(out["float"], matrix.tolist())


def test_int8_ranks_like_the_floats():
    """One scale for every dimension: int8 dot products order documents as the floats do."""
    docs, query = unit_rows(50, 64), unit_rows(1, 64)
    limit = float(np.abs(docs).max())
    q8 = np.asarray(encode_all(query, ["int8"], limit, 64)["int8"], np.int32)
    d8 = np.asarray(encode_all(docs, ["int8"], limit, 64)["int8"], np.int32)
    exact = np.argsort(-(docs @ query[0]))[:5]
    approx = np.argsort(-(d8 @ q8[0]))[:5]
    assert exact[0] == approx[0] and len(set(exact) & set(approx)) >= 4


def test_truncated_vectors_scale_the_range():
    assert limit_for(0.25, 512, 512) == 0.25
    assert limit_for(0.25, 128, 512) == pytest.approx(0.5)


def test_the_range_covers_the_models_calibration_embeddings(model_dir):
    from clipfleet.config import ClipModelSpec

    spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    model = load_clip_model(spec, choose_device("cpu"), False)
    limit = calibration_limit(model)
    seen = max(
        np.abs(model.embed_images(calibration_images(8))).max(),
        np.abs(model.encode_texts(list(CALIBRATION_PROMPTS))).max(),
    )
    assert seen <= limit <= seen + 1.1e-6  # rounded up to 6 decimals


def card_limit(http, profile: str = "fast", encoder: str = "clip") -> tuple[float, str]:
    card = http.get(f"/v1/models/{profile}").json()
    entry = card["clip"]["stable"] if encoder == "clip" else card["resnet"]
    return entry["quantization"]["int8_limit"], entry["embedding_space"]


@pytest.mark.parametrize("profile", ["fast", "accurate"])
def test_embed_text_compressed_types_follow_the_published_range(client, profile):
    texts = ["a photo of a cat", "a red dress", "x"]
    limit, space = card_limit(client, profile)

    def embed(encoding, **extra):
        body = {"texts": texts, "profile": profile, "encoding_format": encoding, **extra}
        response = client.post("/v1/embed/text", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["embedding_space"] == space
        return response.json()

    floats = np.asarray(embed("float")["embeddings"])
    assert np.abs(np.asarray(embed("int8")["embeddings"]) - formula_int8(floats, limit)).max() <= 1
    np.testing.assert_array_equal(embed("ubinary")["embeddings"], sign_bits(floats))
    short = embed("float", dimensions=8)["embeddings"]
    short8 = embed("int8", dimensions=8)["embeddings"]
    assert np.abs(np.asarray(short8) - formula_int8(short, limit_for(limit, 8, 32))).max() <= 1


def test_embed_image_compressed_types_for_clip_and_resnet(client):
    images = [{"base64": image_base64(seed=seed)} for seed in range(2)]
    for encoder in ("clip", "resnet"):
        limit, space = card_limit(client, encoder=encoder)
        body = {"images": images, "encoder": encoder}
        floats = np.asarray(client.post("/v1/embed/image", json=body).json()["embeddings"])
        int8 = client.post("/v1/embed/image", json={**body, "encoding_format": "int8"}).json()
        assert int8["embedding_space"] == space
        assert np.abs(np.asarray(int8["embeddings"]) - formula_int8(floats, limit)).max() <= 1
        binary = client.post("/v1/embed/image", json={**body, "encoding_format": "binary"}).json()
        np.testing.assert_array_equal(np.asarray(binary["embeddings"]) + 128, sign_bits(floats))
