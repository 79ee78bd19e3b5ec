"""`build_app(args) -> Application`: the import path serve_config.yaml names.

No `from __future__ import annotations` here: Serve reads the real `AppArgs` annotation to
validate `args`.

The graph is clipfleet.graph.wire's; this module binds its nodes as Serve deployments. Each
encoder's user_config (batching, cache) comes from the Serve config, or EncoderConfig's
defaults.
"""

import logging

from ray.serve import Application

from clipfleet.config import AppArgs, random_weights_enabled
from clipfleet.graph import wire
from deployments.clip_encoder import ClipEncoder
from deployments.image_fetcher import ImageFetcher
from deployments.ingress import Ingress
from deployments.multiplexed_encoder import multiplexed_encoder
from deployments.resnet_encoder import ResNetEncoder
from deployments.scorer import Scorer

logger = logging.getLogger("ray.serve")


class ServeBinder:
    """clipfleet.graph.Binder over Serve: each node a bound deployment, named as config.py
    names it (the fetcher, scorer and ingress keep their class names)."""

    def fetcher(self, limits):
        return ImageFetcher.bind(limits)

    def scorer(self):
        return Scorer.bind()

    def clip_encoder(self, name, spec):
        return ClipEncoder.options(name=name).bind(spec)

    def resnet_encoder(self, name, spec):
        return ResNetEncoder.options(name=name).bind(spec)

    def multiplexed_encoder(self, name, profile, spec):
        # Built per profile: Ray fixes the LRU size when the loader is decorated.
        return multiplexed_encoder(spec).options(name=name).bind(profile, spec)

    def ingress(self, args, graph):
        return Ingress.bind(args, *graph)


def build_app(args: AppArgs) -> Application:
    if random_weights_enabled():
        logger.warning("CLIPFLEET_RANDOM_WEIGHTS=1: every model gets RANDOM weights (tests only)")
    return wire(args, ServeBinder())
