"""The image size a model's own preprocessing keeps, so an image can be decoded straight to it.

A CLIP or ResNet preprocess resizes the shorter side to S and centre-crops a square (or squashes
both sides to S x S); everything outside that square is thrown away and everything finer than
S px is averaged away. An encoder that decodes the bytes itself can therefore decode (JPEG draft
mode) and resize straight to an S x S square (clipfleet.images.decode's `crop` / `squash` geometry)
instead of the fetcher's generic 448 px array, and the model's resize becomes the identity.
`None` where the preprocessing is anything else (keep-ratio, patch-based NaFlex, ...): those
images get the generic geometry and the model does its own resizing as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from clipfleet.config import FetchLimits


@dataclass(frozen=True)
class InputGeometry:
    side: int  # the square the model's preprocessing keeps, before its final crop
    fit: Literal["crop", "squash"]

    def as_dict(self) -> dict:
        return {"side": self.side, "fit": self.fit}

    def limits(self, base: FetchLimits) -> FetchLimits:
        """`base` (its checks and budget unchanged) shipping exactly this square."""
        return base.model_copy(
            update={
                "ship_shortest_side": self.side,
                "ship_longest_side": self.side,
                "ship_long_side_fit": self.fit,
            }
        )


def _single(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and len(size) == 1:
        return int(size[0])
    return None


def _square(size: Any) -> int | None:
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return None


def torchvision_geometry(transform: Any) -> InputGeometry | None:
    """From a torchvision Compose (Resize, CenterCrop, ...) or a weights' ImageClassification
    preset (resize_size, crop_size)."""
    resize_size = getattr(transform, "resize_size", None)
    crop_size = getattr(transform, "crop_size", None)
    if resize_size is not None and crop_size is not None:  # ImageClassification
        side, crop = _single(resize_size), _single(crop_size)
        return InputGeometry(side, "crop") if side and crop and crop <= side else None
    from torchvision.transforms import CenterCrop, Compose, Resize

    steps = transform.transforms if isinstance(transform, Compose) else []
    resizes = [step for step in steps if isinstance(step, Resize)]
    if len(resizes) != 1 or getattr(resizes[0], "max_size", None):
        return None
    if (side := _square(resizes[0].size)) is not None:
        return InputGeometry(side, "squash")
    side = _single(resizes[0].size)
    crops = [step for step in steps if isinstance(step, CenterCrop)]
    if side is None or len(crops) != 1:
        return None
    crop = _square(crops[0].size) or _single(crops[0].size)
    return InputGeometry(side, "crop") if crop is not None and crop <= side else None


def hf_processor_geometry(processor: Any) -> InputGeometry | None:
    """From a transformers image processor: `shortest_edge` + centre crop (CLIP), or a square
    `height` x `width` resize (SigLIP)."""
    if not getattr(processor, "do_resize", False):
        return None
    size = getattr(processor, "size", None)
    shortest = getattr(size, "shortest_edge", None) or _get(size, "shortest_edge")
    height, width = _get(size, "height"), _get(size, "width")
    if shortest and getattr(processor, "do_center_crop", False):
        crop = getattr(processor, "crop_size", None)
        crop_height, crop_width = _get(crop, "height"), _get(crop, "width")
        if crop_height and crop_height == crop_width and crop_height <= shortest:
            return InputGeometry(int(shortest), "crop")
        return None
    if not shortest and height and height == width and not getattr(size, "longest_edge", None):
        return InputGeometry(int(height), "squash")
    return None


def _get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)
