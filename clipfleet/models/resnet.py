"""torchvision classifiers (ResNet-50 by default) as L2-normalised feature extractors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models import get_model, get_model_weights

from clipfleet.config import ResNetSpec
from clipfleet.models.base import (
    ImageEncoderModel,
    ModelInfo,
    ModelLoadError,
    report_random_weights,
    to_pil,
)
from clipfleet.models.device import DevicePlan
from clipfleet.models.fingerprint import seeded_init


def _weights_enum(model: str, name: str):
    try:
        return get_model_weights(model)[name]
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(
            f"{name!r} is neither a local state-dict file nor a torchvision weights name for "
            f"{model!r}"
        ) from exc


def strip_classifier_head(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the last Linear layer (the classifier) so the model returns pooled features."""
    last_linear = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last_linear = name
    if last_linear is None:
        raise ModelLoadError(f"{type(model).__name__} has no Linear classifier head to remove")
    parent_name, _, attr = last_linear.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.Identity())
    return model


class ResNetModel(ImageEncoderModel):
    def __init__(self, spec: ResNetSpec, plan: DevicePlan, random_weights: bool) -> None:
        started = time.perf_counter()
        self.plan = plan
        weights_file = Path(spec.weights).expanduser()
        try:
            if random_weights or weights_file.is_file():
                # seeded from the spec: every replica and restart builds the same random model
                with seeded_init(spec.model_dump(include={"model", "weights"}), random_weights):
                    model = get_model(spec.model, weights=None)
                named_weights = random_weights and not weights_file.is_file()
                transforms_name = spec.weights if named_weights else spec.transforms_from
                transforms_enum = _weights_enum(spec.model, transforms_name)
                if not random_weights:
                    state = torch.load(weights_file, map_location="cpu", weights_only=True)
                    model.load_state_dict(state)
                source = "random" if random_weights else f"file:{spec.weights}"
            else:
                transforms_enum = _weights_enum(spec.model, spec.weights)
                model = get_model(spec.model, weights=transforms_enum)
                source = f"torchvision:{transforms_enum}"
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not load torchvision model {spec.model!r} (weights={spec.weights!r}): "
                f"{exc}. Pre-fetch with `make weights`, point `weights` at a local state-dict "
                "file, or set CLIPFLEET_RANDOM_WEIGHTS=1 (random weights, tests only)."
            ) from exc
        if random_weights:
            report_random_weights(f"torchvision {spec.model}")
        self._model = strip_classifier_head(model).eval().to(plan.device)
        self._preprocess = transforms_enum.transforms()
        embed_dim = int(self.embed_images([np.zeros((32, 32, 3), np.uint8)]).shape[1])
        self.info = ModelInfo(
            family="resnet",
            backend="torchvision",
            model=spec.model,
            weights=source,
            embed_dim=embed_dim,
            device=plan.name,
            load_seconds=time.perf_counter() - started,
        )

    def preprocess_image(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        return self._preprocess(to_pil(image))

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model(pixels)

    def image_tower(self) -> torch.nn.Module:
        return self._model
