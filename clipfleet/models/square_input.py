"""An image already at its model's input square, made the model's input tensor in one numpy
expression: bit for bit what the model's own preprocessing gives it, without its per-image
machinery.

Inline and fetched images reach an encoder decoded straight to the square its model's
preprocessing keeps (clipfleet.models.geometry), so that preprocessing's resize and centre crop
are identities. What is left is a conversion to float32 and a per-channel affine map, which the
libraries wrap in per-image work that costs more than the map itself: transformers' image
processors (argument validation, PIL -> numpy -> tensor, grouping by shape, the identity resize
and crop), open_clip's torchvision Compose (an array -> PIL copy, PIL's resize and crop to the
same size, ToTensor, Normalize).
Here it runs on the decoding thread, single-threaded: torch operations there would start an
OpenMP team per decode thread beside the forward's, on the same cores.

Only where the result is the same: an HxWx3 uint8 array of exactly the square, and a processor
whose steps are the ones replayed here (anything else, e.g. padding or a keep-ratio resize, goes
through the library as before). `tests/unit/models/test_square_input.py` checks equality with the
library's own output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class SquareInput:
    side: int
    mean: np.ndarray  # (3, 1, 1) float32, subtracted from the values
    std: np.ndarray  # (3, 1, 1) float32, divided into them
    divisor: float | None = None  # the 0-255 values divided by it first (ToTensor's 255)

    def __call__(self, image: Any) -> torch.Tensor | None:
        """The (3, side, side) float32 input for `image`; None unless it is exactly the square."""
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.shape != (self.side, self.side, 3)
        ):
            return None
        pixels = np.asarray(image.transpose(2, 0, 1), dtype=np.float32, order="C")
        if self.divisor is not None:
            np.divide(pixels, np.float32(self.divisor), out=pixels)
        np.subtract(pixels, self.mean, out=pixels)
        np.divide(pixels, self.std, out=pixels)
        return torch.from_numpy(pixels)


def hf_square_input(processor: Any) -> SquareInput | None:
    """For a transformers torchvision-backend image processor (CLIP's, SigLIP's) whose resize to
    a square (or shortest edge + centre crop of the same side) ends in a fused rescale and
    normalize; None for any other processor or setting."""
    from transformers.image_processing_backends import TorchvisionBackend

    from clipfleet.models.geometry import hf_processor_geometry

    if type(processor).__module__.startswith("transformers.models.siglip2"):
        return None  # NaFlex: patches, not a square
    geometry = hf_processor_geometry(processor)
    if (
        not isinstance(processor, TorchvisionBackend)
        or geometry is None
        or not (processor.do_rescale and processor.do_normalize)
        or getattr(processor, "do_pad", False)
        or _crop_side(processor, geometry.fit) not in (None, geometry.side)
    ):
        return None
    # The constants exactly as the processor's fused rescale-and-normalize computes them
    # (TorchvisionBackend._fuse_mean_std_and_rescale_factor), in float32.
    scale = 1.0 / processor.rescale_factor
    mean = torch.tensor(_three(processor.image_mean)) * scale
    std = torch.tensor(_three(processor.image_std)) * scale
    return SquareInput(geometry.side, mean.numpy().reshape(3, 1, 1), std.numpy().reshape(3, 1, 1))


def torchvision_square_input(transform: Any) -> SquareInput | None:
    """For open_clip's preprocessing: a torchvision Compose of Resize, CenterCrop of the same
    side, open_clip's mode conversion, ToTensor and Normalize; None for anything else."""
    from open_clip.transform import MaybeConvertMode
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor

    from clipfleet.models.geometry import torchvision_geometry

    geometry = torchvision_geometry(transform)
    if geometry is None or not isinstance(transform, Compose):
        return None
    kinds = (Resize, CenterCrop, MaybeConvertMode, ToTensor, Normalize)
    steps = transform.transforms
    if len(steps) != len(kinds) or not all(map(isinstance, steps, kinds)):
        return None
    crop, convert, normalize = steps[1], steps[2], steps[4]
    if list(crop.size) != [geometry.side] * 2 or convert.mode != "RGB" or normalize.inplace:
        return None
    # as Normalize makes them: float32 tensors of the given values
    mean = torch.as_tensor(_three(normalize.mean), dtype=torch.float32)
    std = torch.as_tensor(_three(normalize.std), dtype=torch.float32)
    return SquareInput(
        geometry.side, mean.numpy().reshape(3, 1, 1), std.numpy().reshape(3, 1, 1), 255.0
    )


def _crop_side(processor: Any, fit: str) -> int | None:
    if fit == "squash" or not getattr(processor, "do_center_crop", False):
        return None
    crop = processor.crop_size
    return getattr(crop, "height", None) or crop.get("height")


def _three(values: Any) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, list | tuple) else [values])]
    return values * 3 if len(values) == 1 else values
