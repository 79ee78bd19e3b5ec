"""The Ray driver of the two-node test cluster, run in a child process so the pytest process
never joins the cluster:

    python -m tests.support.ray_cluster_driver ADDRESS deploy HTTP_PORT ARGS_JSON
    python -m tests.support.ray_cluster_driver ADDRESS placement

It prints one `RESULT:<json>` line.
"""

from __future__ import annotations

import json
import sys

from clipfleet.config import FIXED_DEPLOYMENTS, AppArgs
from tests.support.ray_cluster import (
    APP_NAME,
    ENCODER_OPTIONS,
    HEAD_IP,
    HEAD_OPTIONS,
    PROXY_HOST,
    RESULT,
)


def _connect(address: str) -> None:
    import ray

    # _node_ip_address: attach to the head's raylet (both nodes share this machine).
    ray.init(address=address, _node_ip_address=HEAD_IP, log_to_driver=False, logging_level="ERROR")


def pinned_binder():
    """The shipped graph with the placement a serve config's `deployments:` would give:
    encoders on the worker node, the rest on the head."""
    from pipelines.app import ServeBinder

    class PinnedBinder(ServeBinder):
        def deploy(self, deployment, name=None):
            on_head = deployment.name in FIXED_DEPLOYMENTS
            options = HEAD_OPTIONS if on_head else ENCODER_OPTIONS
            return super().deploy(deployment, name).options(ray_actor_options=options)

    return PinnedBinder()


def _deploy(address: str, http_port: str, args_json: str) -> dict:
    """serve.run(build_app(args)) with the deployments pinned: encoders to the worker node."""
    from ray import serve

    from clipfleet.ingress.graph import wire

    _connect(address)
    serve.start(
        proxy_location="HeadOnly", http_options={"host": PROXY_HOST, "port": int(http_port)}
    )
    app = wire(AppArgs(**json.loads(args_json)), pinned_binder())
    serve.run(app, name=APP_NAME, route_prefix="/")
    return {"deployed": APP_NAME}


def _placement(address: str) -> dict:
    """Alive nodes, and the node of every alive Serve replica and proxy (from the GCS tables:
    the state API, ray.util.state, needs the dashboard, which this cluster does not run)."""
    import ray
    from ray._private.state import actors

    _connect(address)
    nodes = {
        node["NodeID"]: {"ip": node["NodeManagerAddress"], "alive": node["Alive"]}
        for node in ray.nodes()
    }
    replicas: dict[str, list[str]] = {}
    proxies = []
    for actor in actors(actor_state_name="ALIVE").values():
        class_name, node_id = actor["ActorClassName"], actor["Address"]["NodeID"]
        if class_name.startswith(f"ServeReplica:{APP_NAME}:"):
            replicas.setdefault(class_name.split(":", 2)[2], []).append(node_id)
        elif class_name == "ProxyActor":
            proxies.append(node_id)
    return {"nodes": nodes, "replicas": replicas, "proxies": proxies}


if __name__ == "__main__":
    address, command, *rest = sys.argv[1:]
    result = {"deploy": _deploy, "placement": _placement}[command](address, *rest)
    print(RESULT + json.dumps(result), flush=True)
