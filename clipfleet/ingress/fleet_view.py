"""What the fleet looks like from an ingress replica: the deployment map, each deployment's
model details (`/v1/status`, `/v1/models/{id}`) and readiness. A component the service is
built with (`service.fleet`), over the same handles; IngressRuntime gives it the readiness view
and the cold starts inside Serve."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from clipfleet.config import (
    STABLE_VARIANT,
    AppArgs,
    clip_deployment_name,
    multiplexed_deployment_name,
    resnet_deployment_name,
)
from clipfleet.ingress.coldstart import ColdStarts
from clipfleet.ingress.readiness import ReadinessView
from clipfleet.ingress.serve_state import deployment_states
from clipfleet.ingress.targets import Profile
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.rollout.traffic import TrafficManager


@dataclass
class FleetView:
    args: AppArgs
    fetcher: Any
    scorer: Any
    profiles: dict[str, Profile]
    multiplexed: MultiplexedProfiles
    traffic: TrafficManager
    readiness_view: ReadinessView | None = None  # inside Serve (IngressRuntime.start)
    cold_starts: ColdStarts | None = None  # inside Serve (IngressRuntime.start)
    # What runs, for a view built on a probe: the Serve controller's deployment states
    states: Callable[[], tuple[str | None, dict | None]] = deployment_states
    refresh_on_probe: bool = False

    async def multiplexed_models(self) -> dict:
        """Multiplexed profiles: allow-lists, LRU sizes and one replica's pool each."""
        return await self.multiplexed.details()

    async def models(self) -> dict:
        profiles = {}
        for name, profile in self.profiles.items():
            spec = self.args.profiles[name]
            traffic = self.traffic.view()[name]
            variants = dict(
                zip(
                    profile.clip,
                    await asyncio.gather(
                        *(
                            self._describe_warm(clip_deployment_name(name, v), h)
                            for v, h in profile.clip.items()
                        )
                    ),
                    strict=True,
                )
            )
            resnet = resnet_deployment_name(spec.resnet)
            resnet_info = await self._describe_warm(resnet, profile.resnet)
            profiles[name] = {
                "clip": {
                    variant: {
                        **spec.variants[variant].model_dump(),
                        **info,
                        "label": profile.clip_labels[variant],
                        "traffic": traffic[variant],
                    }
                    for variant, info in variants.items()
                },
                "resnet": {
                    **spec.resnet.model_dump(),
                    **resnet_info,
                    "label": profile.resnet_label,
                },
            }
        random_flags = [
            info["random_weights"]
            for entry in profiles.values()
            for info in [*entry["clip"].values(), entry["resnet"]]
        ]
        return {
            "default_profile": self.args.default_profile,
            "random_weights": any(random_flags),
            "rollback_policy": self.traffic.policy.model_dump(),
            "traffic_state": self.traffic.shared_state(),
            "profiles": profiles,
            **(
                {"multiplexed": await self.multiplexed_models()} if self.multiplexed.handles else {}
            ),
        }

    async def _describe_warm(self, deployment: str, handle: Any) -> dict:
        """The deployment's `describe`; a scaled-to-zero one is not asked (that would start a
        replica): what the config says, and that it is scaled to zero."""
        if self.cold_starts is not None and self.cold_starts.is_cold(deployment):
            return {"random_weights": False, "scaled_to_zero": True}
        return await handle.describe.remote()

    def deployment_checks(self) -> dict[str, tuple[str, Any]]:
        """{readiness key: (deployment name, handle)} for every deployment."""
        checks = {
            "image_fetcher": ("ImageFetcher", self.fetcher),
            "scorer": ("Scorer", self.scorer),
        }
        for name, profile in self.profiles.items():
            for variant, handle in profile.clip.items():
                suffix = "" if variant == STABLE_VARIANT else f".{variant}"
                checks[f"{name}.clip{suffix}"] = (clip_deployment_name(name, variant), handle)
            resnet = resnet_deployment_name(self.args.profiles[name].resnet)
            checks[f"{name}.resnet"] = (resnet, profile.resnet)
        for name, handle in self.multiplexed.items():
            checks[f"{name}.multiplexed"] = (multiplexed_deployment_name(name), handle)
        return checks

    def describe_checks(self) -> dict[str, tuple[str, Callable[[], Awaitable[dict]]]]:
        """What ReadinessView checks: {readiness key: (deployment name, its describe())}."""
        return {
            key: (deployment, handle.describe.remote)
            for key, (deployment, handle) in self.deployment_checks().items()
        }

    async def readiness(self) -> tuple[bool, dict]:
        """ReadinessView's answer, the one readiness there is. Inside Serve, IngressRuntime
        starts the view and it refreshes in the background; a view built here (outside Serve:
        the local graph, whose `states` say what runs) refreshes on each probe."""
        if self.readiness_view is None:
            self.readiness_view = ReadinessView(self.describe_checks(), states=self.states)
            self.refresh_on_probe = True
        if self.refresh_on_probe:
            await self.readiness_view.refresh()
        return self.readiness_view.current()
