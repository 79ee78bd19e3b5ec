"""The application graph, decided once from `AppArgs`: `wire(args, binder)`.

Ingress -> ImageFetcher, Scorer, one ClipEncoder per profile variant, one ResNetEncoder per
distinct ResNet spec (profiles naming the same ResNet share it), one multiplexed encoder per
multiplexed profile. The encoders get the fetch limits too: inline images (base64, uploads)
go to them directly and are decoded there, within the same limits. The binder turns each node
into something the next one can call: `pipelines/app.py` binds Serve deployments;
tests/support/local_dag.py builds the plain classes of clipfleet.replicas behind in-process
handles. Both walk this one graph.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from clipfleet.config import (
    AppArgs,
    ClipModelSpec,
    FetchLimits,
    MultiplexedProfileSpec,
    ResNetSpec,
    clip_deployment_name,
    multiplexed_deployment_name,
    resnet_deployment_name,
)


class Graph(NamedTuple):
    """What the ingress is built over: `Ingress(args, graph)`, its nodes as deployment handles;
    ClipfleetService takes its fields by name."""

    fetcher: Any
    scorer: Any
    clip_encoders: dict[str, dict[str, Any]]  # profile -> variant -> encoder
    resnet_encoders: dict[str, Any]  # profile -> encoder (shared between profiles)
    multiplexed_encoders: dict[str, Any]  # multiplexed profile -> encoder


class Binder(Protocol):
    """One method per role; each returns what the ingress calls (a handle, or a bound node)."""

    def fetcher(self, limits: FetchLimits) -> Any: ...

    def scorer(self) -> Any: ...

    def clip_encoder(self, name: str, spec: ClipModelSpec, limits: FetchLimits) -> Any: ...

    def resnet_encoder(self, name: str, spec: ResNetSpec, limits: FetchLimits) -> Any: ...

    def multiplexed_encoder(
        self, name: str, profile: str, spec: MultiplexedProfileSpec, limits: FetchLimits
    ) -> Any: ...

    def ingress(self, args: AppArgs, graph: Graph) -> Any: ...


def wire(args: AppArgs, binder: Binder) -> Any:
    """Bind every node of the graph once, then the ingress over them; returns the ingress."""
    clip_encoders = {
        profile: {
            variant: binder.clip_encoder(
                clip_deployment_name(profile, variant), clip_spec, args.fetch
            )
            for variant, clip_spec in spec.variants.items()
        }
        for profile, spec in args.profiles.items()
    }
    shared_resnets: dict[str, Any] = {}
    resnet_encoders = {}
    for profile, spec in args.profiles.items():
        name = resnet_deployment_name(spec.resnet)
        if name not in shared_resnets:
            shared_resnets[name] = binder.resnet_encoder(name, spec.resnet, args.fetch)
        resnet_encoders[profile] = shared_resnets[name]
    multiplexed = {
        profile: binder.multiplexed_encoder(
            multiplexed_deployment_name(profile), profile, spec, args.fetch
        )
        for profile, spec in args.multiplexed.items()
    }
    graph = Graph(
        binder.fetcher(args.fetch), binder.scorer(), clip_encoders, resnet_encoders, multiplexed
    )
    return binder.ingress(args, graph)
