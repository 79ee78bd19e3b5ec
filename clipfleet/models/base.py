"""The interface every encoder exposes, and the batched-forward plumbing they share."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipfleet.models.device import DevicePlan, inference, l2_normalize
from clipfleet.models.fingerprint import describe_transform
from clipfleet.models.geometry import InputGeometry, torchvision_geometry
from clipfleet.scoring import ScoreSemantics

logger = logging.getLogger("clipfleet.models")

WARMUP_IMAGE_SIDE = 64


@dataclass(frozen=True)
class TextTokens:
    """One text as its text tower takes it: `ids` (the backend's own 1-D form) and `count`, the
    tokens it sees (start and end tokens included, after truncation to the context)."""

    ids: Any
    count: int


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded."""


@dataclass
class ModelInfo:
    family: str  # "clip" or "resnet"
    backend: str
    model: str
    weights: str  # "pretrained:<tag>", "file:<path>", "hub:<id>", "torchvision:<enum>", "random"
    embed_dim: int
    device: str
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "backend": self.backend,
            "model": self.model,
            "weights": self.weights,
            "random_weights": self.random_weights,
            "embed_dim": self.embed_dim,
            "device": self.device,
            "load_seconds": round(self.load_seconds, 3),
            **self.extra,
        }


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
    return Image.fromarray(image, mode="RGB")


class ImageEncoderModel(ABC):
    """Split into preprocess (per item, CPU) and a batched forward (CPU or GPU)."""

    info: ModelInfo
    plan: DevicePlan

    @abstractmethod
    def preprocess_image(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """One decoded RGB image -> the model's input tensor (C, H, W)."""

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """A (N, C, H, W) batch on the model's device -> (N, D) unnormalised features."""

    def encode_images(self, pixel_batch: list[torch.Tensor]) -> np.ndarray:
        """Preprocessed tensors -> (N, D) L2-normalised float32 embeddings."""
        stacked = torch.stack(pixel_batch)
        if self.plan.device.type == "cuda" and stacked.device.type == "cpu":
            stacked = stacked.pin_memory()  # page-locked: the copy to the GPU is a real DMA
        stacked = stacked.to(self.plan.device, non_blocking=True)
        return self._run(self._image_features, stacked)

    def input_geometry(self) -> InputGeometry | None:
        """The square this model's preprocessing keeps (an image decoded straight to it gives
        the same input); None where its preprocessing is anything else."""
        transform = getattr(self, "_preprocess", None)
        return torchvision_geometry(transform) if transform is not None else None

    def image_tower(self) -> torch.nn.Module:
        """The module behind `_image_features` (what runtime=onnx exports)."""
        raise NotImplementedError(f"{type(self).__name__} has no exportable image tower")

    def weights_module(self) -> torch.nn.Module:
        """The whole model whose weights the vectors come from (its digest names them)."""
        return self._model

    def preprocessing_description(self) -> str:
        """The image preprocessing, described the same in every process."""
        return describe_transform(self._preprocess)

    def embed_images(self, images: list[np.ndarray | Image.Image]) -> np.ndarray:
        """Convenience for callers without a batcher: preprocess + forward."""
        return self.encode_images([self.preprocess_image(image) for image in images])

    def _run(self, forward: Callable[[Any], torch.Tensor], inputs: Any) -> np.ndarray:
        # Not thread-safe by design: callers run one forward at a time per model. Serving goes
        # through a ForwardScheduler (one drain task per replica, image and text alike); the
        # batch job's Ray Data actors run their UDF single-threaded; the benchmarks are serial.
        with inference(self.plan):
            features = forward(inputs)
        return l2_normalize(features).cpu().numpy().astype(np.float32, copy=False)

    def warmup(self) -> float:
        """One real forward pass; returns its duration in seconds."""
        started = time.perf_counter()
        blank = np.full((WARMUP_IMAGE_SIDE, WARMUP_IMAGE_SIDE, 3), 127, dtype=np.uint8)
        self.embed_images([blank])
        return time.perf_counter() - started


class ClipModel(ImageEncoderModel):
    """A CLIP: images and texts into one L2-normalised space."""

    logit_scale: float
    logit_bias: float | None = None  # set by models trained with a sigmoid loss (SigLIP)

    @property
    def semantics(self) -> ScoreSemantics:
        """How this model's similarities become confidences, read from the model itself: a
        learned logit_bias means a sigmoid loss (SigLIP), none the CLIP softmax."""
        if self.logit_bias is None:
            return ScoreSemantics("softmax", self.logit_scale, 0.0)
        return ScoreSemantics("sigmoid", self.logit_scale, self.logit_bias)

    def _finish_loading(
        self,
        model: torch.nn.Module,
        backend: str,
        spec: Any,
        weights: str,
        started: float,
        **extra: Any,
    ) -> None:
        """Read the learned logit scale (and SigLIP's bias) and describe the loaded model."""
        self.logit_scale = float(model.logit_scale.exp().item())
        bias = getattr(model, "logit_bias", None)  # SigLIP's learned bias: sigmoid semantics
        self.logit_bias = None if bias is None else float(bias.item())
        self.info = ModelInfo(
            family="clip",
            backend=backend,
            model=spec.model,
            weights=weights,
            embed_dim=int(self.encode_texts(["probe"]).shape[1]),
            device=self.plan.name,
            load_seconds=time.perf_counter() - started,
            extra={**self.semantics_info(), **extra},
        )

    def semantics_info(self) -> dict[str, Any]:
        semantics = self.semantics
        return {
            "logit_scale": round(semantics.logit_scale, 4),
            "activation": semantics.activation,
            "logit_bias": round(semantics.logit_bias, 4),
        }

    def tokenize(self, texts: list[str]) -> list[TextTokens]:
        """Each text's tokens, cut first to what the tokenizer can use
        (clipfleet.models.text_bounds): what `encode_tokens` takes, and the usage count. One
        call at a time per model: requests tokenize on worker threads, and open_clip's BPE
        cache is emptied when full (a lookup on another thread would miss it mid-way)."""
        with self.__dict__.setdefault("_tokenize_lock", threading.Lock()):
            return self._tokenize(texts)

    @abstractmethod
    def _tokenize(self, texts: list[str]) -> list[TextTokens]:
        """`tokenize` of one backend."""

    @abstractmethod
    def _token_features(self, tokens: list[TextTokens]) -> torch.Tensor:
        """Tokenized texts -> (N, D) unnormalised features."""

    def encode_tokens(self, tokens: list[TextTokens]) -> np.ndarray:
        return self._run(self._token_features, tokens)

    @abstractmethod
    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids the text tower is given for each text (padding included)."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Convenience for callers that don't keep the tokens: tokenize + forward."""
        return self.encode_tokens(self.tokenize(texts))

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [tokens.count for tokens in self.tokenize(texts)]

    def warmup(self) -> float:
        started = time.perf_counter()
        super().warmup()
        self.encode_texts(["a photo of a cat."])
        return time.perf_counter() - started


def report_random_weights(description: str) -> None:
    logger.warning(
        "RANDOM WEIGHTS: %s is built with random initialisation (CLIPFLEET_RANDOM_WEIGHTS=1). "
        "Its embeddings and scores are meaningless; use this mode for tests only.",
        description,
    )
