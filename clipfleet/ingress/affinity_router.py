"""Serve's side of content-affinity routing (clipfleet.ingress.affinity): a RequestRouter
(ray.serve.request_router, Ray 2.60) that each caller's handle of an opted-in encoder
deployment runs. pipelines/app.py sets it through the deployment's RequestRouterConfig.

Without FIFOMixin: a routing task assigns the replica it chose to its own request (the base
router matches the exact request), never to whichever request queued first, which would send
that other request's content to this one's owner.
"""

from __future__ import annotations

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import (
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

from clipfleet.ingress.affinity import choose_owner, route_key_of
from clipfleet.observability import metrics


class ContentAffinityRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, max_owner_queue: int = 8) -> None:
        """`request_router_kwargs` of the deployment's RequestRouterConfig."""
        self.max_owner_queue = max_owner_queue

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """The key's owner first, then two random replicas (power of two choices), which are
        also the only rank for a call without a key or whose owner is over the bound. The
        owner's queue length is the router's cached one (unknown: try the owner; Serve's own
        probe rejects a replica at max_ongoing_requests, and the next rank is tried)."""
        fallback = await PowerOfTwoChoicesRequestRouter.choose_replicas(
            self, candidate_replicas, pending_request
        )
        key = route_key_of(pending_request.kwargs) if pending_request is not None else None
        if key is None or not candidate_replicas:
            return fallback
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        queue_lens = {
            unique_id: self._replica_queue_len_cache.get(replica.replica_id)
            for unique_id, replica in by_id.items()
        }
        owner = choose_owner(key, queue_lens, self.max_owner_queue)
        metrics.record_affinity("fallback" if owner is None else "owner")
        if owner is None:
            return fallback
        return [[by_id[owner]], *fallback]
