"""fetch.gpu_decode: JPEGs shipped undecoded, decoded by the encoder (GPU where it has one).

The CPU-side tests run everywhere; the CUDA ones skip cleanly without a GPU.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipfleet.config import ClipModelSpec, FetchLimits, ResNetSpec
from clipfleet.errors import PayloadTooLargeError
from clipfleet.images.decode import decode_image
from clipfleet.images.gpu_decode import (
    EncodedJpeg,
    decode_on_cpu,
    decode_on_device,
    jpeg_for_device,
    preprocess_on_device,
)
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.resnet import ResNetModel

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LIMITS = FetchLimits()


def encoded(fmt: str = "JPEG", mode: str = "RGB", size=(120, 90)) -> bytes:
    rng = np.random.default_rng(5)
    coarse = rng.integers(0, 255, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=92)
    return buffer.getvalue()


def test_jpegs_within_limits_are_shipped_undecoded():
    jpeg = jpeg_for_device(encoded(), LIMITS)
    assert isinstance(jpeg, EncodedJpeg) and (jpeg.width, jpeg.height) == (120, 90)
    assert jpeg_for_device(encoded(mode="L"), LIMITS) is not None
    assert jpeg.key() == jpeg_for_device(encoded(), LIMITS).key()


@pytest.mark.parametrize(
    "data",
    [encoded("PNG"), encoded("WEBP"), encoded(mode="CMYK"), b"not an image", b""],
    ids=["png", "webp", "cmyk-jpeg", "garbage", "empty"],
)
def test_everything_else_is_left_to_the_cpu_decoder(data):
    assert jpeg_for_device(data, LIMITS) is None


def test_limits_still_apply_before_shipping():
    assert jpeg_for_device(encoded(size=(400, 300)), FetchLimits(max_pixels=1000)) is None
    with pytest.raises(PayloadTooLargeError):  # and the CPU path then says why
        decode_image(encoded(size=(400, 300)), FetchLimits(max_pixels=1000))


def test_an_encoder_without_a_gpu_decodes_like_the_fetcher():
    data = encoded(size=(1000, 700))
    np.testing.assert_array_equal(
        decode_on_cpu(jpeg_for_device(data, LIMITS), LIMITS), decode_image(data, LIMITS)
    )


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.sum(first * second))


def tiny_models(model_dir):
    cpu = choose_device("cpu")
    clip = load_clip_model(ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}"), cpu, False)
    resnet = ResNetModel(
        ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt")), cpu, False
    )
    return clip, resnet


def test_tensor_preprocessing_matches_the_pil_path(model_dir):
    """The GPU path's preprocessing, run on CPU tensors: same embedding as PIL's, to rounding."""
    data = encoded(size=(300, 200))
    (decoded,) = decode_on_device([jpeg_for_device(data, LIMITS)], torch.device("cpu"))
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for model in tiny_models(model_dir):
        via_tensor = model.encode_images([preprocess_on_device(model, decoded)])[0]
        via_pil = model.embed_images([pixels])[0]
        assert cosine(via_tensor, via_pil) >= 0.99


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_decode_matches_the_cpu_decode():
    jpeg = jpeg_for_device(encoded(size=(640, 480)), LIMITS)
    (on_gpu,) = decode_on_device([jpeg], torch.device("cuda"))
    (on_cpu,) = decode_on_device([jpeg], torch.device("cpu"))
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape == (3, 480, 640)
    difference = (on_gpu.cpu().int() - on_cpu.int()).abs().float().mean()
    assert difference < 2.0  # IDCT implementations differ by a grey level here and there


@pytest.mark.gpu
@needs_cuda
def test_gpu_decoded_embeddings_match_the_cpu_path(model_dir):
    spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    on_gpu = load_clip_model(spec, choose_device("cuda"), False)
    data = encoded(size=(640, 480))
    (decoded,) = decode_on_device([jpeg_for_device(data, LIMITS)], torch.device("cuda"))
    pixels = preprocess_on_device(on_gpu, decoded)
    assert pixels.device.type == "cuda"
    vector = on_gpu.encode_images([pixels])[0]
    reference = on_gpu.embed_images([decode_image(data, LIMITS)])[0]
    assert cosine(vector, reference) >= 0.99
