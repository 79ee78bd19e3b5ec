"""The plain encoder replicas without Ray: the encoder core (clipfleet/replicas/core.py) over one
model. ResNetEncoder is it over a torchvision classifier; ClipEncoder (clip.py) over a CLIP."""

from __future__ import annotations

import time
from typing import Any

from clipfleet.config import FetchLimits, ResNetSpec
from clipfleet.models.base import ImageEncoderModel
from clipfleet.models.device import DevicePlan
from clipfleet.models.embedding_space import stamp
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.resnet import ResNetModel
from clipfleet.models.sizing import ForwardLease
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.core import DirectQueue, EncoderCore, QueueFactory


class OneModel:
    """The core's models when there is one: warmed up and stamped with its space before it
    serves; every request is served by it (`model_id` None)."""

    model_id = None

    def __init__(self, model: ImageEncoderModel, kinds: tuple[str, ...]) -> None:
        started = time.perf_counter()
        self.model = self.fixed = model
        self.kinds = kinds
        self.warmup_seconds = model.warmup()
        stamp(model)  # its embedding space and int8 range, before it serves
        # From the constructor's start to ready: what a scaled-to-zero profile's first request
        # waits for (clipfleet/ingress/coldstart.py), less the process's own start.
        self.cold_start_s = model.info.load_seconds + time.perf_counter() - started

    @property
    def cache_space(self) -> str:
        """The shared cache's namespace: the model's space (clipfleet.replicas.shared_cache)."""
        return self.model.info.extra["model_space"]

    @property
    def device(self) -> str:
        return self.model.info.device

    async def for_request(self, count: bool = True) -> OneModel:
        return self

    def describe(self) -> dict[str, Any]:
        geometry = self.model.input_geometry()
        text = {}
        if "text" in self.kinds:
            text = {
                "logit_scale": self.model.logit_scale,
                "semantics": self.model.semantics.as_dict(),
            }
        return {
            **self.model.info.as_dict(),
            "warmup_seconds": round(self.warmup_seconds, 3),
            "cold_start_s": round(self.cold_start_s, 3),
            # the square images are decoded to for this model (None: the fetch default)
            "input_geometry": geometry.as_dict() if geometry else None,
            **text,
        }


class ImageEncoder(EncoderCore):
    """The encoder core over one model, whose `kinds` of work it serves (image; text too for
    a CLIP)."""

    def __init__(
        self,
        model: ImageEncoderModel,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
        queue: QueueFactory = DirectQueue,
        kinds: tuple[str, ...] = ("image",),
    ) -> None:
        """lease: the node's CPU forward lease; limits: the application's fetch limits (see
        EncoderCore); queue: how items reach a forward (a Serve shell's @serve.batch)."""
        self.model = model
        super().__init__(OneModel(model, kinds), replica_id, lease, limits, queue)

    @property
    def cold_start_s(self) -> float:
        return self.models.cold_start_s

    @property
    def warmup_seconds(self) -> float:
        return self.models.warmup_seconds


class ResNetEncoder(ImageEncoder):
    """Any torchvision classifier's features, on the spec's runtime."""

    def __init__(
        self,
        spec: ResNetSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
        queue: QueueFactory = DirectQueue,
    ) -> None:
        model = apply_runtime(ResNetModel(spec, plan, random_weights), spec)
        super().__init__(model, replica_id, lease, limits, queue)
