"""The fleet's embedding-cache hit rate: one encoder replica, two with content-affinity routing,
two without (issue 26; docs/fleet.md, "One cache for the fleet").

    flock /tmp/clipfleet-ray.lock timeout 900 .venv/bin/python -m loadtests.affinity

One local Ray; for each setting the app is deployed afresh (the tiny test models with their own
weights: a hit rate depends on routing, not on the model), then a stream repeating DISTINCT
images ROUNDS times (in rounds, `workers` at a time) goes to /v1/embed/image, and the CLIP
encoder replicas' cache counters are read. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from clipfleet.config import AppArgs
from clipfleet.ingress.graph import wire
from tests.support.fleet_cache import (
    fleet_image_hit_rate,
    repeating_stream,
    replica_stats,
    send_stream,
)
from tests.support.local_dag import tiny_app_args
from tests.support.servers import free_port

ENCODER = "clip_fast"
SETTINGS = (("1 replica", 1, False), ("2 replicas, affinity", 2, True), ("2 replicas", 2, False))


def deploy(args: AppArgs, replicas: int, port: int) -> str:
    from ray import serve

    from pipelines.app import ServeBinder

    class SmallBinder(ServeBinder):
        def deploy(self, deployment, name=None):
            bound = super().deploy(deployment, name)
            options = {"ray_actor_options": {"num_cpus": 0.1}}
            if name == ENCODER:
                options["num_replicas"] = replicas
            return bound.options(**options)

    serve.run(wire(args, SmallBinder(args.affinity)), name="affinity", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def measure(distinct: int, rounds: int, workers: int) -> list[dict]:
    import ray
    from ray import serve

    from tests.support.tiny_models import make_hf_clip_dir, make_open_clip_dir, make_resnet_file

    folder = Path(tempfile.mkdtemp(prefix="clipfleet-affinity-"))
    make_open_clip_dir(folder / "open_clip")
    make_hf_clip_dir(folder / "hf_clip")
    make_resnet_file(folder / "resnet18.pt")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    try:
        for seed, (label, replicas, affinity) in enumerate(SETTINGS):
            chosen = {"deployments": [ENCODER]} if affinity else {}
            args = tiny_app_args(folder, affinity=chosen)
            url = deploy(args, replicas, port)
            handle = serve.get_deployment_handle(ENCODER, app_name="affinity")
            before = replica_stats(handle, replicas)
            images = repeating_stream(distinct, rounds, seed=1000 * (seed + 1))
            statuses = send_stream(url, images, "fast", workers)
            after = replica_stats(handle, replicas)
            rows.append(
                {
                    "setting": label,
                    "requests": len(images),
                    "ok": statuses.count(200),
                    "hit_rate": round(fleet_image_hit_rate(before, after), 3),
                    "entries": sorted(stats["entries"] for stats in after.values()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            serve.delete("affinity")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    options = parser.parse_args()
    measure(options.distinct, options.rounds, options.workers)


if __name__ == "__main__":
    main()
