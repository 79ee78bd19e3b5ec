"""Deploying apps on the integration tier's one local Ray + Serve the way `serve deploy` does,
and waiting (bounded) for them."""

from __future__ import annotations

import time
from typing import Any

import requests

from clipfleet.config import (
    AppArgs,
    clip_deployment_name,
    multiplexed_deployment_name,
    resnet_deployment_name,
)

APP_NAME = "clipfleet"
READY_TIMEOUT_S = 240


def small_deployments(args: AppArgs, cpus: float = 0.2, **encoder_options) -> list[dict]:
    """Deployment overrides that let several apps share this 2-core machine."""
    entries = [
        {"name": name, "ray_actor_options": {"num_cpus": 0.1}}
        for name in ("Ingress", "ImageFetcher", "Scorer")
    ]
    encoders = {resnet_deployment_name(spec.resnet) for spec in args.profiles.values()}
    for profile, spec in args.profiles.items():
        encoders |= {clip_deployment_name(profile, variant) for variant in spec.variants}
    encoders |= {multiplexed_deployment_name(profile) for profile in args.multiplexed}
    for name in sorted(encoders):
        entries.append({"name": name, "ray_actor_options": {"num_cpus": cpus}, **encoder_options})
    return entries


def merge_deployments(base: list[dict], overrides: list[dict]) -> list[dict]:
    merged = {entry["name"]: dict(entry) for entry in base}
    for entry in overrides:
        merged.setdefault(entry["name"], {"name": entry["name"]}).update(entry)
    return list(merged.values())


class ServeApps:
    """Declarative deploys: every apply() sends the whole config, like `serve deploy`."""

    def __init__(self, base_url: str, port: int, metrics_port: int | None = None) -> None:
        self.base_url = base_url
        self.port = port
        self.metrics_port = metrics_port  # Ray's Prometheus endpoint: 127.0.0.1:<it>/metrics
        self.apps: dict[str, dict[str, Any]] = {}
        self.applied_at: dict[str, float] = {}  # time.time() of each app's last apply()

    def apply(
        self, name: str, route_prefix: str, args: AppArgs, deployments: list[dict] | None = None
    ) -> None:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        # One test module's app at a time beside the main one: earlier modules' apps are
        # removed by this declarative deploy, so their idle replicas stop taking CPU and memory.
        self.apps = {key: app for key, app in self.apps.items() if key in (APP_NAME, name)}
        self.apps[name] = {
            "name": name,
            "route_prefix": route_prefix,
            "import_path": "pipelines.app:build_app",
            "args": args.model_dump(mode="json"),
            "deployments": deployments or small_deployments(args),
        }
        config = ServeDeploySchema.model_validate(
            {
                "http_options": {"host": "127.0.0.1", "port": self.port},
                "applications": list(self.apps.values()),
            }
        )
        self.applied_at[name] = time.time()
        _get_global_client().deploy_apps(config, _blocking=False)

    def wait_applied(self, name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until the controller runs what the last apply() sent for `name`: its application
        RUNNING since that deploy, every deployment HEALTHY. Until then requests may still be
        served by the previous ingress or replicas without the new user_config (readiness
        answers for the old app too)."""
        from ray import serve

        def applied() -> bool:
            app = serve.status().applications.get(name)
            return (
                app is not None
                and app.last_deployed_time_s >= self.applied_at[name] - 1
                and app.status == "RUNNING"
                and all(d.status == "HEALTHY" for d in app.deployments.values())
            )

        wait_for(applied, timeout_s, message=f"{name}'s last deploy applied")

    def url(self, route_prefix: str) -> str:
        return self.base_url + route_prefix.rstrip("/")


def wait_ready(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(f"{base_url}/readyz", timeout=10)
            if last.status_code == 200:
                return last.json()
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready after {timeout_s} s: {last and last.text}")


def wait_for(condition, timeout_s: float, interval_s: float = 1.0, message: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s: {message}")
