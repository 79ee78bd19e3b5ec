"""Multiplexed CLIP encoder: one deployment serving many models of one backend, by id.

Ray fixes `max_num_models_per_replica` when `@serve.multiplexed` decorates the loader, so the
class is built per profile at bind time (`multiplexed_encoder(spec)`). Requests carry the id
as the handle's `multiplexed_model_id`; Serve routes them to replicas that already hold it and
`@serve.batch` keeps different ids in different batches. The replica's work is
clipfleet.replicas.multiplexed's.
"""

from __future__ import annotations

from ray import serve
from ray.serve.deployment import Deployment

from clipfleet.config import FetchLimits, MultiplexedProfileSpec, random_weights_enabled
from clipfleet.models.catalog import LoadedModel
from clipfleet.replicas import multiplexed
from deployments._context import replica_id
from deployments._encoder import (
    BatchedImagesAndTexts,
    encoder_deployment,
    fleet_drills,
    prepare_replica,
)

_RAY_WRAPPER_ATTR = "__serve_multiplex_wrapper"  # where @serve.multiplexed keeps its LRU


class MultiplexedClipEncoderBase(BatchedImagesAndTexts, multiplexed.MultiplexedClipEncoder):
    """Everything but the loader, whose decoration depends on the profile's LRU size."""

    def __init__(
        self, profile: str, spec: MultiplexedProfileSpec, limits: FetchLimits | None = None
    ) -> None:
        plan = prepare_replica()
        super().__init__(profile, spec, plan, random_weights_enabled(), replica_id(), limits=limits)
        fleet_drills(self.guard)

    def _lru_models(self) -> dict[str, LoadedModel]:
        wrapper = getattr(self, _RAY_WRAPPER_ATTR, None)
        return dict(wrapper.models) if wrapper is not None else {}

    def _unload(self, model_id: str) -> None:
        wrapper = getattr(self, _RAY_WRAPPER_ATTR, None)
        if wrapper is not None and wrapper.models.pop(model_id, None) is not None:
            wrapper._push_multiplexed_replica_info = True  # routing stops sending it here

    def _requested_model_id(self) -> str:
        return serve.get_multiplexed_model_id()


def multiplexed_encoder(spec: MultiplexedProfileSpec) -> Deployment:
    """The deployment for one multiplexed profile, its LRU sized from the spec."""

    class MultiplexedClipEncoder(MultiplexedClipEncoderBase):
        @serve.multiplexed(max_num_models_per_replica=spec.max_models_per_replica)
        async def _lru_get(self, model_id: str) -> LoadedModel:
            return await self.pool.take(model_id)

    return encoder_deployment(MultiplexedClipEncoder)
