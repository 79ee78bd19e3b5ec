"""ResNet (any torchvision classifier) feature deployment, batched."""

from __future__ import annotations

from ray import serve

from clipfleet.config import ResNetSpec, random_weights_enabled
from clipfleet.models.resnet import ResNetModel
from deployments._encoder import DEFAULT_CONFIG, BatchedImageEncoder, prepare_replica


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class ResNetEncoder(BatchedImageEncoder):
    def __init__(self, spec: ResNetSpec) -> None:
        self.model = ResNetModel(spec, prepare_replica(), random_weights_enabled())
        self.config = DEFAULT_CONFIG
        self._init_stats()
