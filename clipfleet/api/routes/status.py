"""`GET /v1/status`: the models document (profiles, variants, weights, traffic; what GET
/v1/models returned before it took OpenAI's shape), replica counts per deployment and, per
encoder replica, its device, process figures (CPU %, RSS, GPU memory and utilisation on CUDA),
model load time and weights.

Replica counts come from the Serve controller (`serve.status()`, asked from a worker thread so
the ingress's event loop never blocks). Encoder figures come from each replica's `describe()`:
a handle routes each call to one replica, so a few concurrent calls per deployment are sent
and answers are grouped by replica id; `replicas_reporting` says how many were reached.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from clipfleet.api.deps import get_service
from clipfleet.config import STABLE_VARIANT, clip_deployment_name, resnet_deployment_name
from clipfleet.ingress.serve_state import deployment_states
from clipfleet.ingress.serve_state import running_replicas as _running
from clipfleet.ingress.service import ClipfleetService
from clipfleet.observability.resources import process_resources, system_resources

router = APIRouter(prefix="/v1", tags=["v1"])
DESCRIBE_TIMEOUT_S = 5.0
MAX_PROBES = 16
REPLICA_KEYS = (
    "replica_id",
    "device",
    "model",
    "weights",
    "random_weights",
    "load_seconds",
    "warmup_seconds",
    "cold_start_s",
    "torch_threads",
    "process",
)


def encoder_handles(service: ClipfleetService) -> dict[str, dict[str, Any]]:
    """{deployment name: {handle, family, profiles, variant}} for every encoder deployment."""
    encoders: dict[str, dict[str, Any]] = {}
    for name, profile in service.profiles.items():
        for variant, handle in profile.clip.items():
            encoders[clip_deployment_name(name, variant)] = {
                "handle": handle,
                "family": "clip",
                "profiles": [name],
                "variant": variant,
            }
        resnet = resnet_deployment_name(service.args.profiles[name].resnet)
        entry = encoders.setdefault(
            resnet,
            {
                "handle": profile.resnet,
                "family": "resnet",
                "profiles": [],
                "variant": STABLE_VARIANT,
            },
        )
        entry["profiles"].append(name)
    return encoders


async def probe_replicas(handle: Any, expected: int) -> list[dict]:
    """Describe as many distinct replicas as a few concurrent calls reach."""
    calls = 1 if expected <= 1 else min(2 * expected + 1, MAX_PROBES)
    answers = await asyncio.gather(
        *(asyncio.wait_for(_describe(handle), DESCRIBE_TIMEOUT_S) for _ in range(calls)),
        return_exceptions=True,
    )
    replicas: dict[str, dict] = {}
    for answer in answers:
        if isinstance(answer, dict):
            summary = {key: answer[key] for key in REPLICA_KEYS if key in answer}
            replicas.setdefault(str(answer.get("replica_id", "local")), summary)
    return list(replicas.values())


async def _nothing() -> list[dict]:
    return []


async def _describe(handle: Any) -> dict:
    return await handle.describe.remote()


async def encoder_status(
    service: ClipfleetService, deployments: dict[str, dict] | None
) -> dict[str, dict]:
    encoders = encoder_handles(service)
    probes = [  # a deployment scaled to zero is not probed: that would start a replica
        probe_replicas(entry["handle"], _running(deployments, name) or 1)
        if _running(deployments, name) != 0
        else _nothing()
        for name, entry in encoders.items()
    ]
    status = {}
    for (name, entry), replicas in zip(
        encoders.items(), await asyncio.gather(*probes), strict=True
    ):
        status[name] = {
            "family": entry["family"],
            "profiles": entry["profiles"],
            "variant": entry["variant"],
            "replicas_running": _running(deployments, name),
            "replicas_reporting": len(replicas),
            "replicas": replicas,
        }
    return status


@router.get("/status")
async def status(service: Annotated[ClipfleetService, Depends(get_service)]) -> dict:
    application, deployments = await asyncio.to_thread(deployment_states)
    cold_starts = service.fleet.cold_starts
    if cold_starts is not None:
        await cold_starts.refresh_measured()
    return {
        # default_profile, random_weights, rollback_policy, profiles
        **await service.fleet.models(),
        "application": application,
        "ingress": {"system": system_resources(), "process": process_resources()},
        "deployments": deployments,
        "encoders": await encoder_status(service, deployments),
        "traffic": service.traffic_view(),
        # per profile: scaled to zero now, its cold start (measured by its replicas, or the
        # configured estimate until one has started); null outside Serve
        "cold_starts": cold_starts.view() if cold_starts is not None else None,
    }
