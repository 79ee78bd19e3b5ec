"""Ingress deployment: Serve's shell around the FastAPI app, which is built on the replica
with its service (clipfleet/ingress/runtime.py runs what goes on beside the routes)."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve

from clipfleet.api.app import create_app
from clipfleet.config import AppArgs
from clipfleet.ingress.graph import Graph
from clipfleet.ingress.runtime import IngressRuntime, replica_service
from clipfleet.rollout.store import RayKVStore


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(self, args: AppArgs, graph: Graph) -> None:
        """`graph`: clipfleet.ingress.graph.wire's, its nodes as Serve's deployment handles."""
        context = serve.get_replica_context()
        store = RayKVStore()
        service = replica_service(
            args, graph, store, context.app_name, context.replica_id.unique_id
        )
        self.runtime = IngressRuntime(service, store=store, app=context.app_name)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this on the replica's event loop, after the constructor."""
        self.runtime.start()
        return create_app(self.runtime.service)

    async def reconfigure(self, user_config: dict) -> None:
        """Async, so it runs on the event loop that routes requests (never beside it on a
        thread)."""
        await self.runtime.reconfigure(user_config)
