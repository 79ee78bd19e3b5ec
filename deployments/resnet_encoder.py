"""ResNet (any torchvision classifier) feature deployment, batched."""

from __future__ import annotations

from ray import serve

from clipfleet.config import ResNetSpec, random_weights_enabled
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.resnet import ResNetModel
from deployments._encoder import DEFAULT_CONFIG, BatchedImageEncoder, prepare_replica


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class ResNetEncoder(BatchedImageEncoder):
    def __init__(self, spec: ResNetSpec) -> None:
        model = ResNetModel(spec, prepare_replica(), random_weights_enabled())
        self.model = apply_runtime(model, spec)
        self.config = DEFAULT_CONFIG
        self._init_stats()
