"""`build_app(args) -> Application`: the import path serve_config.yaml names.

No `from __future__ import annotations` here: Serve reads the real `AppArgs` annotation to
validate `args`.

The graph is clipfleet.ingress.graph.wire's; this module binds its nodes as Serve deployments. Each
encoder's user_config (batching, cache) comes from the Serve config, or EncoderConfig's
defaults.
"""

import logging

from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.deployment import Deployment

from clipfleet.config import (
    FETCHER_DEPLOYMENT,
    INGRESS_DEPLOYMENT,
    SCORER_DEPLOYMENT,
    AffinityConfig,
    AppArgs,
    random_weights_enabled,
)
from clipfleet.ingress.affinity import ROUTER_CLASS
from clipfleet.ingress.graph import wire
from deployments.clip_encoder import ClipEncoder
from deployments.image_fetcher import ImageFetcher
from deployments.ingress import Ingress
from deployments.multiplexed_encoder import multiplexed_encoder
from deployments.resnet_encoder import ResNetEncoder
from deployments.scorer import Scorer

logger = logging.getLogger("ray.serve")


class ServeBinder:
    """clipfleet.ingress.graph.Binder over Serve: each node a bound deployment, named as
    clipfleet.config names it; the encoders `affinity` names get the content-affinity
    router (clipfleet.ingress.affinity)."""

    def __init__(self, affinity: AffinityConfig = AffinityConfig()) -> None:
        self.affinity = affinity

    def deploy(self, deployment: Deployment, name: str | None = None) -> Deployment:
        """The deployment a node is bound from (a subclass may add options, e.g. placement)."""
        if name in self.affinity.deployments:
            router = RequestRouterConfig(
                request_router_class=ROUTER_CLASS,
                request_router_kwargs={"max_owner_queue": self.affinity.max_owner_queue},
            )
            return deployment.options(name=name, request_router_config=router)
        return deployment.options(name=name) if name else deployment

    def fetcher(self, limits):
        return self.deploy(ImageFetcher, FETCHER_DEPLOYMENT).bind(limits)

    def scorer(self):
        return self.deploy(Scorer, SCORER_DEPLOYMENT).bind()

    def clip_encoder(self, name, spec, limits):
        return self.deploy(ClipEncoder, name).bind(spec, limits)

    def resnet_encoder(self, name, spec, limits):
        return self.deploy(ResNetEncoder, name).bind(spec, limits)

    def multiplexed_encoder(self, name, profile, spec, limits):
        # Built per profile: Ray fixes the LRU size when the loader is decorated.
        return self.deploy(multiplexed_encoder(spec), name).bind(profile, spec, limits)

    def ingress(self, args, graph):
        return self.deploy(Ingress, INGRESS_DEPLOYMENT).bind(args, graph)


def build_app(args: AppArgs) -> Application:
    if random_weights_enabled():
        logger.warning("CLIPFLEET_RANDOM_WEIGHTS=1: every model gets RANDOM weights (tests only)")
    return wire(args, ServeBinder(args.affinity))
