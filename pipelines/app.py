"""`build_app(args) -> Application`: the import path serve_config.yaml names.

No `from __future__ import annotations` here: Serve reads the real `AppArgs` annotation to
validate `args`.

Graph: Ingress -> ImageFetcher, Scorer, one ClipEncoder per profile variant, one ResNetEncoder per
distinct ResNet spec (profiles naming the same ResNet share it).
"""

import logging

from ray.serve import Application

from clipfleet.config import (
    AppArgs,
    clip_deployment_name,
    multiplexed_deployment_name,
    random_weights_enabled,
    resnet_deployment_name,
)
from deployments.clip_encoder import ClipEncoder
from deployments.image_fetcher import ImageFetcher
from deployments.ingress import Ingress
from deployments.multiplexed_encoder import multiplexed_encoder
from deployments.resnet_encoder import ResNetEncoder
from deployments.scorer import Scorer

logger = logging.getLogger("ray.serve")


def build_app(args: AppArgs) -> Application:
    if random_weights_enabled():
        logger.warning("CLIPFLEET_RANDOM_WEIGHTS=1: every model gets RANDOM weights (tests only)")
    # The encoders' default user_config; serve_config.yaml's per-deployment user_config wins.
    encoder_config = args.batching.model_dump()
    clip_encoders = {
        name: {
            variant: ClipEncoder.options(
                name=clip_deployment_name(name, variant), user_config=encoder_config
            ).bind(clip_spec)
            for variant, clip_spec in spec.variants.items()
        }
        for name, spec in args.profiles.items()
    }
    shared_resnets: dict[str, Application] = {}
    resnet_encoders = {}
    for name, spec in args.profiles.items():
        deployment_name = resnet_deployment_name(spec.resnet)
        if deployment_name not in shared_resnets:
            shared_resnets[deployment_name] = ResNetEncoder.options(
                name=deployment_name, user_config=encoder_config
            ).bind(spec.resnet)
        resnet_encoders[name] = shared_resnets[deployment_name]
    # One deployment per multiplexed profile; its class is built here because Ray fixes the
    # LRU size (max_num_models_per_replica) when the loader is decorated.
    multiplexed = {
        name: multiplexed_encoder(spec)
        .options(name=multiplexed_deployment_name(name), user_config=encoder_config)
        .bind(name, spec)
        for name, spec in args.multiplexed.items()
    }
    return Ingress.bind(
        args,
        ImageFetcher.bind(args.fetch),
        Scorer.bind(),
        clip_encoders,
        resnet_encoders,
        multiplexed,
    )
