"""Plain logic: config validation, scoring math, image decoding, errors, device choice."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from clipfleet.config import AppArgs, BatchingConfig, ClipModelSpec, FetchLimits, ProfileSpec
from clipfleet.errors import InvalidImageError, UpstreamError, find_clipfleet_error
from clipfleet.images.decode import decode_image
from clipfleet.models.device import choose_device, torch_threads_for
from clipfleet.scoring import clip_scores, zero_shot
from tests.support.images import image_bytes

CLIP = ClipModelSpec(model="ViT-B-32", pretrained="openai")


def test_app_args_reject_unknown_keys_and_bad_default():
    with pytest.raises(ValidationError, match="extra"):
        AppArgs(profiles={"fast": ProfileSpec(clip=CLIP)}, surprise=1)
    with pytest.raises(ValidationError, match="default_profile"):
        AppArgs(profiles={"fast": ProfileSpec(clip=CLIP)}, default_profile="accurate")
    with pytest.raises(ValidationError, match="profile name"):
        AppArgs(profiles={"Fast Profile": ProfileSpec(clip=CLIP)}, default_profile="Fast Profile")


def test_transformers_spec_rejects_pretrained_tag():
    with pytest.raises(ValidationError, match="only for backend open_clip"):
        ClipModelSpec(backend="transformers", model="openai/clip-vit-base-patch32", pretrained="x")


def test_batching_bounds():
    with pytest.raises(ValidationError):
        BatchingConfig(max_batch_size=0)
    with pytest.raises(ValidationError):
        BatchingConfig(max_batch_size=8, unknown=True)


def test_clip_score_is_clamped_hundred_times_cosine():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text = np.array([[1.0, 0.0], [-1.0, 0.0], [3.0, 4.0]])
    scores = clip_scores(image, text)
    assert [round(s["cosine"], 6) for s in scores] == [1.0, -1.0, 1.0]
    assert [round(s["clip_score"], 6) for s in scores] == [100.0, 0.0, 100.0]


def test_zero_shot_softmax_uses_logit_scale():
    labels = ["a", "b"]
    tags = zero_shot(np.array([1.0, 0.0]), np.array([[1.0, 0.0], [0.0, 1.0]]), labels, 10.0, 2)
    assert tags[0]["label"] == "a"
    expected = np.exp(10.0) / (np.exp(10.0) + np.exp(0.0))
    assert tags[0]["confidence"] == pytest.approx(expected)
    assert sum(tag["confidence"] for tag in tags) == pytest.approx(1.0)
    assert len(zero_shot(np.array([1.0, 0.0]), np.eye(2), labels, 1.0, 1)) == 1


def test_decode_downscales_large_images_and_keeps_small_ones():
    limits = FetchLimits(ship_shortest_side=128)
    small = decode_image(image_bytes(100, 80), limits)
    assert small.shape == (80, 100, 3) and small.dtype == np.uint8
    large = decode_image(image_bytes(1200, 600), limits)
    assert min(large.shape[:2]) == 128 and large.shape[1] == 256


def test_decode_applies_exif_orientation_and_flattens_alpha():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    Image.new("RGB", (40, 20), (255, 0, 0)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), FetchLimits()).shape == (40, 20, 3)
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), FetchLimits()).min() == 255


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"<html>not an image</html>", 415),
        (image_bytes()[:200], 400),
        (image_bytes(4, 4, fmt="PNG"), 400),
    ],
)
def test_decode_rejects_bad_input(data, status):
    with pytest.raises(Exception) as caught:
        decode_image(data, FetchLimits())
    assert find_clipfleet_error(caught.value).status == status


def test_decode_rejects_too_many_pixels():
    with pytest.raises(Exception) as caught:
        decode_image(image_bytes(300, 300, fmt="PNG"), FetchLimits(max_pixels=10_000))
    assert find_clipfleet_error(caught.value).status == 413


def test_errors_survive_pickling_and_wrapping():
    error = UpstreamError("upstream said 404", "images[1]")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.status, clone.param, clone.message) == (502, "images[1]", "upstream said 404")
    try:
        try:
            raise InvalidImageError("bad")
        except InvalidImageError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert find_clipfleet_error(outer).type == "invalid_image"


def test_device_choice_without_cuda():
    plan = choose_device(cuda_available=False)
    assert plan.device.type == "cpu" and not plan.fp16
    assert choose_device(cuda_available=True).fp16
    with pytest.raises(RuntimeError, match="CUDA"):
        choose_device("cuda", cuda_available=False)
    assert torch_threads_for(0.5) == 1 and torch_threads_for(2) == 2
