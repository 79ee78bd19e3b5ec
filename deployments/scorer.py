"""Scoring deployment: CLIP score / cosine for pairs, zero-shot tags."""

from __future__ import annotations

from ray import serve

from clipfleet.replicas import scorer
from deployments._context import replica_id


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Scorer(scorer.Scorer):
    def __init__(self) -> None:
        super().__init__(replica_id())
