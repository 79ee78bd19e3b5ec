"""Comparing the service's encoders with the reference libraries' output: the CPU device, the
texts and mixed-size images they encode, and the bound on row cosines."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from clipfleet.models.device import choose_device

CPU = choose_device("cpu")
TEXTS = ["a photo of a cat", "a dog on a skateboard, at dusk", "x"]
MIN_COSINE = 0.9999


def mixed_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    shapes = [(90, 120), (200, 64), (64, 64), (301, 257)]
    return [Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)) for shape in shapes]


def assert_rows_match(ours: np.ndarray, reference: torch.Tensor) -> None:
    reference = torch.nn.functional.normalize(reference.float(), dim=-1).numpy()
    assert ours.shape == reference.shape
    cosines = np.sum(ours * reference, axis=1)
    assert cosines.min() >= MIN_COSINE, cosines
