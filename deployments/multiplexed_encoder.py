"""Multiplexed CLIP encoder: one deployment serving many models of one backend, by id.

Ray fixes `max_num_models_per_replica` when `@serve.multiplexed` decorates the loader, so the
class is built per profile at bind time (`multiplexed_encoder(spec)`); Serve finds multiplexing
by that decorated method on the deployment's class. Requests carry the id as the handle's
`multiplexed_model_id`; Serve routes them to replicas that already hold it and `@serve.batch`
keeps different ids in different batches. The replica's work is
clipfleet.replicas.multiplexed's, given Serve's LRU (`ServeLru`), batch queue and model id.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Deployment

from clipfleet.config import FetchLimits, MultiplexedProfileSpec, random_weights_enabled
from clipfleet.models.catalog import LoadedModel
from clipfleet.replicas import multiplexed
from deployments._context import replica_id
from deployments._encoder import (
    ServeBatchQueue,
    encoder_deployment,
    fleet_drills,
    prepare_replica,
)

_RAY_WRAPPER_ATTR = "__serve_multiplex_wrapper"  # where @serve.multiplexed keeps its LRU


class ServeLru:
    """The replica's `@serve.multiplexed` loader and the LRU Ray keeps beside it, as the pool's
    LRU (clipfleet.replicas.multiplexed.Lru)."""

    def __init__(self, replica: Any) -> None:
        self._replica = replica

    def _wrapper(self) -> Any:
        return getattr(self._replica, _RAY_WRAPPER_ATTR, None)

    @property
    def models(self) -> dict[str, LoadedModel]:
        wrapper = self._wrapper()
        return dict(wrapper.models) if wrapper is not None else {}

    async def get(self, model_id: str) -> LoadedModel:
        return await self._replica.load_model(model_id)

    def unload(self, model_id: str) -> None:
        wrapper = self._wrapper()
        if wrapper is not None and wrapper.models.pop(model_id, None) is not None:
            wrapper._push_multiplexed_replica_info = True  # routing stops sending it here


def multiplexed_encoder(spec: MultiplexedProfileSpec) -> Deployment:
    """The deployment for one multiplexed profile, its LRU sized from the spec."""

    class MultiplexedClipEncoder(multiplexed.MultiplexedClipEncoder):
        def __init__(
            self, profile: str, spec: MultiplexedProfileSpec, limits: FetchLimits | None = None
        ) -> None:
            super().__init__(
                profile,
                spec,
                prepare_replica(),
                random_weights_enabled(),
                replica_id(),
                limits=limits,
                queue=ServeBatchQueue,
                lru=ServeLru(self),
                requested_model_id=serve.get_multiplexed_model_id,
            )
            fleet_drills(self.guard)

        @serve.multiplexed(max_num_models_per_replica=spec.max_models_per_replica)
        async def load_model(self, model_id: str) -> LoadedModel:
            """Ray's loader: the pool's staged model (clipfleet.models.catalog.ModelPool.take)."""
            return await self.pool.take(model_id)

    return encoder_deployment(MultiplexedClipEncoder)
