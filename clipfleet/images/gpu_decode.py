"""JPEG decoding on the encoder's GPU (nvJPEG through torchvision), for `fetch.gpu_decode`.

On a GPU node the CPU side is the limit: a 1-2 MP JPEG costs ~10-30 ms of one core to decode
and resize, a ViT-B-32 fp16 forward a few ms per image. With `fetch.gpu_decode: true` the
fetcher checks a JPEG's header (format, size limits) but does not decode it; it ships the bytes
(`EncodedJpeg`, smaller than the pixels too), and an encoder on a GPU decodes them there with
`torchvision.io.decode_jpeg(device="cuda")` and runs its preprocessing on the GPU tensor. An
encoder without a GPU decodes them on its CPU as the fetcher would have, so the flag is safe
on any node. Other formats (and CMYK JPEGs, which nvJPEG can't read) are decoded by the fetcher
as before.

torch and torchvision are imported where a decode on the device needs them, not by this module:
the ImageFetcher imports it for `jpeg_for_device` and never runs a model (its process stays
~800 MiB smaller without torch).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipfleet.config import FetchLimits
from clipfleet.images.decode import _check_header, decode_image

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG whose header passed the fetch limits, not yet decoded."""

    data: bytes
    width: int
    height: int

    def key(self) -> bytes:
        """Embedding-cache key: the file's hash (a decoded-pixel hash would need the decode)."""
        return b"j" + hashlib.blake2b(self.data, digest_size=16).digest()


def jpeg_for_device(data: bytes, limits: FetchLimits) -> EncodedJpeg | None:
    """The bytes as an EncodedJpeg when a GPU can decode them (a JPEG, RGB or grayscale, within
    the limits); None for anything else, which the caller decodes on the CPU (and rejects
    there with the usual errors)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=["JPEG"]) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    return None
                _check_header(image, limits)
                return EncodedJpeg(data, *image.size)
    except Exception:  # not a JPEG, or a bad one: the CPU path says what is wrong
        return None


def decode_on_cpu(jpeg: EncodedJpeg, limits: FetchLimits) -> np.ndarray:
    return decode_image(jpeg.data, limits)


def decode_on_device(jpegs: list[EncodedJpeg], device: torch.device) -> list[torch.Tensor]:
    """(3, H, W) uint8 tensors on `device`, EXIF orientation applied (nvJPEG on CUDA)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8) for jpeg in jpegs]
    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)


def preprocess_on_device(model: Any, image: torch.Tensor) -> torch.Tensor:
    """A model's own preprocessing applied to a (3, H, W) uint8 tensor where it lives.

    torchvision's Resize / CenterCrop / Normalize and its weights' ImageClassification presets
    take tensors; ToTensor becomes a scale to [0, 1], and PIL-only steps (open_clip's RGB
    conversion) are skipped: the tensor is RGB already. Bicubic resizing on a tensor is not
    bit-identical to PIL's: tested to cosine >= 0.99 against the PIL path.
    """
    import torch
    from torchvision.transforms import Compose, ToTensor

    transform = getattr(model, "_preprocess", None)
    if transform is None:  # a backend without a torchvision transform: the CPU path
        return model.preprocess_image(image.permute(1, 2, 0).cpu().numpy())
    steps = transform.transforms if isinstance(transform, Compose) else [transform]
    for step in steps:
        if isinstance(step, ToTensor):
            image = image.float() / 255.0
        elif isinstance(step, torch.nn.Module) or hasattr(step, "forward"):
            image = step(image)
        # plain functions are PIL conversions (open_clip's _convert_to_rgb): nothing to do
    return image
