"""The clipfleet DAG without Ray: the real graph (clipfleet.ingress.graph.wire) of the plain replica
classes (clipfleet.replicas: cache and forward scheduler included), with in-process handles.

Unit tests (v1 API, compat routes) drive the real FastAPI app over this; integration tests
run the same app under a real Ray Serve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipfleet.config import (
    AppArgs,
    ClipModelSpec,
    FetchLimits,
    MultiplexedProfileSpec,
    ProfileSpec,
    ResNetSpec,
)
from clipfleet.ingress.fleet_view import FleetView
from clipfleet.ingress.graph import Graph, wire
from clipfleet.ingress.service import ClipfleetService
from clipfleet.models.device import choose_device
from clipfleet.replicas.clip import ClipEncoder
from clipfleet.replicas.encoder import ResNetEncoder
from clipfleet.replicas.fetcher import Fetcher
from clipfleet.replicas.multiplexed import MultiplexedClipEncoder
from clipfleet.replicas.scorer import Scorer
from tests.support.handles import LocalHandle
from tests.support.images import LOOPBACK_ALLOWED_PORTS


def loopback_fetch(**overrides) -> FetchLimits:
    """Fetch limits that let image URLs reach the tests' own 127.0.0.1 servers: the SSRF guard
    refuses loopback and ports other than 80/443 unless the operator allow-lists name them
    (tests/unit/images/test_netguard.py proves the refusals without them)."""
    overrides.setdefault("allow_private_networks", ("127.0.0.1/32",))
    overrides.setdefault("allowed_ports", LOOPBACK_ALLOWED_PORTS)
    return FetchLimits(**overrides)


LOOPBACK_FETCH = loopback_fetch()


def tiny_app_args(model_dir: Path, **overrides) -> AppArgs:
    """Two profiles over the tiny on-disk models from tests.support.tiny_models; image URLs
    may point at 127.0.0.1 unless `fetch` is overridden."""
    overrides.setdefault("fetch", LOOPBACK_FETCH)
    open_clip_spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    hf_spec = ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip"))
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    profiles = {
        "fast": ProfileSpec(clip=open_clip_spec, resnet=resnet),
        "accurate": ProfileSpec(clip=hf_spec, resnet=resnet),
    }
    return AppArgs(profiles=profiles, **overrides)


def canary_app_args(model_dir: Path, **overrides) -> AppArgs:
    """One profile, `fast`, with the tiny open_clip model as both its stable and its canary
    variant (the traffic split and the canary guard are the test's to set)."""
    spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    profile = ProfileSpec(variants={"stable": spec, "canary": spec}, resnet=resnet)
    return AppArgs(profiles={"fast": profile}, **overrides)


class LocalBinder:
    """clipfleet.ingress.graph.Binder over the plain classes of clipfleet.replicas, on the CPU with
    the models' own weights, each behind `handle(target)` (a LocalHandle unless told otherwise)."""

    def __init__(self, handle: Callable[[Any], Any] = LocalHandle) -> None:
        self.handle = handle
        self.plan = choose_device("cpu")

    def fetcher(self, limits: FetchLimits) -> Any:
        return self.handle(Fetcher(limits))

    def scorer(self) -> Any:
        return self.handle(Scorer())

    def clip_encoder(self, name: str, spec: ClipModelSpec, limits: FetchLimits) -> Any:
        return self.handle(ClipEncoder(spec, self.plan, limits=limits))

    def resnet_encoder(self, name: str, spec: ResNetSpec, limits: FetchLimits) -> Any:
        return self.handle(ResNetEncoder(spec, self.plan, limits=limits))

    def multiplexed_encoder(
        self, name: str, profile: str, spec: MultiplexedProfileSpec, limits: FetchLimits
    ) -> Any:
        return self.handle(MultiplexedClipEncoder(profile, spec, self.plan, limits=limits))

    def ingress(self, args: AppArgs, graph: Graph) -> ClipfleetService:
        service = ClipfleetService(args, **graph._asdict())
        service.fleet.states = lambda: in_process_states(service.fleet)
        return service


def in_process_states(fleet: FleetView) -> tuple[str, dict[str, dict]]:
    """What a Serve controller would say of the local graph: every deployment runs, in process,
    one replica."""
    running = {"status": "HEALTHY", "replicas": {"RUNNING": 1}}
    return "local", {deployment: running for deployment, _ in fleet.deployment_checks().values()}


def build_local_service(
    args: AppArgs, handle: Callable[[Any], Any] = LocalHandle
) -> ClipfleetService:
    """The real graph (clipfleet.ingress.graph.wire) with in-process calls."""
    return wire(args, LocalBinder(handle))
