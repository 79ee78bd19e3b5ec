"""What the fleet looks like from an ingress replica: the deployment map, each deployment's
model details (`/v1/status`, `/v1/models/{id}`) and readiness. A component the service is
built with (`service.fleet`), over the same handles; IngressRuntime gives it the readiness view
and the cold starts inside Serve."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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
from clipfleet.ingress.targets import Profile
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.rollout.traffic import TrafficManager

READINESS_TIMEOUT_S = 5.0


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

    async def readiness(self) -> tuple[bool, dict]:
        """Inside Serve: the background-refreshed view (ReadinessView). Elsewhere (the local
        graph): ask every deployment to answer `describe` (encoders answer after warm-up)."""
        if self.readiness_view is not None:
            return self.readiness_view.current()
        checks: dict[str, Awaitable] = {
            key: handle.describe.remote() for key, (_, handle) in self.deployment_checks().items()
        }
        answers = await asyncio.gather(
            *(asyncio.wait_for(_awaited(check), READINESS_TIMEOUT_S) for check in checks.values()),
            return_exceptions=True,
        )
        status = {}
        for key, answer in zip(checks, answers, strict=True):
            if isinstance(answer, BaseException):
                status[key] = {"ready": False, "reason": type(answer).__name__}
            else:
                status[key] = {"ready": True, **_summary(answer)}
        return all(entry["ready"] for entry in status.values()), status


async def _awaited(awaitable: Awaitable) -> Any:
    return await awaitable


def _summary(description: dict) -> dict:
    keys = ("model", "weights", "random_weights", "device")
    return {key: description[key] for key in keys if key in description}
