"""An image at its model's input square skips the image processor (transformers) or the torchvision
transform (open_clip): the same tensor, bit for bit, and the same embedding; anything else still
goes through the library."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, Siglip2ImageProcessor, SiglipImageProcessor

from clipfleet.config import ClipModelSpec, FetchLimits
from clipfleet.images.decode import decode_image
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.square_input import hf_square_input, torchvision_square_input
from tests.support.images import image_bytes
from tests.support.tiny_models import make_hf_clip_dir, make_hf_siglip_dir, make_open_clip_dir


def pictures(side: int, count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(side)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def processed(processor, image: np.ndarray) -> torch.Tensor:
    return processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize(
    "processor",
    [
        CLIPImageProcessor(),  # shortest edge 224, centre crop 224, OpenAI's mean and std
        CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        SiglipImageProcessor(size={"height": 96, "width": 96}),  # squash, mean = std = 0.5
    ],
)
def test_the_square_gives_the_processors_tensor_bit_for_bit(processor):
    square = hf_square_input(processor)
    assert square is not None
    for image in pictures(square.side):
        mine, theirs = square(image), processed(processor, image)
        assert mine.dtype == theirs.dtype == torch.float32
        assert mine.shape == theirs.shape
        assert mine.is_contiguous()
        assert torch.equal(mine, theirs)


def test_only_the_exact_square_is_taken():
    square = hf_square_input(CLIPImageProcessor())
    assert square(np.zeros((224, 225, 3), np.uint8)) is None
    assert square(np.zeros((224, 224), np.uint8)) is None
    assert square(np.zeros((224, 224, 3), np.float32)) is None
    assert square(Image.new("RGB", (224, 224))) is None


@pytest.mark.parametrize(
    "processor",
    [
        CLIPImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}),
        CLIPImageProcessor(do_normalize=False),
        CLIPImageProcessor(do_rescale=False),
        CLIPImageProcessor(size={"shortest_edge": 224}, do_center_crop=False),  # keeps the ratio
        Siglip2ImageProcessor(max_num_patches=16, patch_size=16),  # NaFlex patches
    ],
)
def test_processors_with_other_steps_keep_their_own_path(processor):
    assert hf_square_input(processor) is None


def open_clip_preprocess(**overrides):
    from open_clip.transform import image_transform

    return image_transform(224, is_train=False, **overrides)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}],
)
def test_open_clips_transform_gives_the_same_tensor_bit_for_bit(overrides):
    transform = open_clip_preprocess(**overrides)  # {}: ViT-B-32's (bicubic, OpenAI mean/std)
    square = torchvision_square_input(transform)
    assert square is not None
    for image in pictures(square.side):
        mine, theirs = square(image), transform(Image.fromarray(image))
        assert mine.is_contiguous()
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("overrides", [{"resize_mode": "squash"}, {"resize_mode": "longest"}])
def test_open_clip_transforms_with_other_steps_keep_their_own_path(overrides):
    assert torchvision_square_input(open_clip_preprocess(**overrides)) is None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("square")
    hf = ClipModelSpec(backend="transformers", model=str(make_hf_clip_dir(folder / "hf_clip")))
    local = "local-dir:" + str(make_open_clip_dir(folder / "open_clip"))
    open_clip = ClipModelSpec(backend="open_clip", model=local, pretrained=None)
    return [load_clip_model(spec, choose_device("cpu"), False) for spec in (hf, open_clip)]


def library_input(model, image: np.ndarray) -> torch.Tensor:
    if hasattr(model, "_processor"):
        return processed(model._processor, image)
    return model._preprocess(Image.fromarray(image))


@pytest.mark.parametrize("backend", [0, 1], ids=["transformers", "open_clip"])
def test_the_model_embeds_a_decoded_square_as_its_library_would(models, backend):
    """Decoded at the model's geometry (as an encoder does), the embedding is the one the
    library's tensor gives; other sizes still go through the library."""
    model = models[backend]
    assert model._square_input is not None
    limits = model.input_geometry().limits(FetchLimits())
    images = [decode_image(image_bytes(*size), limits) for size in ((120, 90), (64, 200))]
    assert {image.shape for image in images} == {(64, 64, 3)}
    fast = model.encode_images([model.preprocess_image(image) for image in images])
    slow = model.encode_images([library_input(model, image) for image in images])
    assert np.array_equal(fast, slow)
    other = np.zeros((80, 100, 3), np.uint8)
    assert torch.equal(model.preprocess_image(other), library_input(model, other))


def test_siglip_two_keeps_its_patches(tmp_path):
    folder = make_hf_siglip_dir(tmp_path / "siglip2", version=2)
    model = load_clip_model(
        ClipModelSpec(backend="transformers", model=str(folder)), choose_device("cpu"), False
    )
    assert isinstance(model.preprocess_image(np.zeros((64, 64, 3), np.uint8)), dict)
