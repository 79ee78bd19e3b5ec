"""The Ray driver of the two-node test cluster, run in a child process so the pytest process
never joins the cluster:

    python -m tests.support.ray_cluster_driver ADDRESS deploy HTTP_PORT ARGS_JSON
    python -m tests.support.ray_cluster_driver ADDRESS placement

It prints one `RESULT:<json>` line.
"""

from __future__ import annotations

import json
import sys

from clipfleet.config import AppArgs
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


def _deploy(address: str, http_port: str, args_json: str) -> dict:
    """serve.run(build_app(args)) with the deployments pinned: encoders to the worker node."""
    from ray import serve

    import pipelines.app as app_module

    _connect(address)
    serve.start(
        proxy_location="HeadOnly", http_options={"host": PROXY_HOST, "port": int(http_port)}
    )
    # build_app binds these module globals; pinned copies make it build the same graph with the
    # placement options (as a serve config's `deployments:` overrides would).
    for name in ("ClipEncoder", "ResNetEncoder"):
        setattr(
            app_module, name, getattr(app_module, name).options(ray_actor_options=ENCODER_OPTIONS)
        )
    for name in ("Ingress", "ImageFetcher", "Scorer"):
        setattr(app_module, name, getattr(app_module, name).options(ray_actor_options=HEAD_OPTIONS))
    app = app_module.build_app(AppArgs(**json.loads(args_json)))
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
