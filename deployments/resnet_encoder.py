"""ResNet (any torchvision classifier) feature deployment, batched."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray import serve

from clipfleet.config import ResNetSpec, random_weights_enabled
from clipfleet.replicas import encoder
from deployments._encoder import mergeable_batch, node_lease, prepare_replica, replica_id


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class ResNetEncoder(encoder.ResNetEncoder):
    def __init__(self, spec: ResNetSpec) -> None:
        plan = prepare_replica()
        super().__init__(spec, plan, random_weights_enabled(), replica_id(), node_lease(plan))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await super().reconfigure(user_config, [self._batch_image])

    @mergeable_batch
    async def _batch_image(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        return await self._forward_images(pixel_batch)
