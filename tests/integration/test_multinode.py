"""A real two-node Ray cluster on this machine: encoders on a worker node, readiness follows it.

Topology, all on loopback. Each node gets its own 127.0.0.x address, so Ray sees two hosts:
- head, 127.0.0.2 (`ray start --head`): GCS, Serve controller, the only HTTP proxy (HeadOnly,
  bound to 127.0.0.1:<free port>), and Ingress / ImageFetcher / Scorer, pinned there by the custom
  resource `ingress_node`.
- worker, 127.0.0.3 (`ray start --address=...`): the custom resource `encoder_node`, which every
  encoder asks for, the way cluster/serve_config.gpu.yaml pins encoders to the GPU group.

Why not 127.0.0.1 for the nodes: `ray start` rewrites 127.0.0.1 / localhost to the machine's
routable address (ray._private.services.resolve_ip_for_localhost); other 127.0.0.x addresses
are left alone. Each node runs `ray start --block` in its own session and is stopped by killing
its whole process tree (workers start their own sessions, so killing the group is not enough):
`ray stop` would stop every Ray on the machine. Token auth uses a per-test token, so the cluster
ignores any ~/.ray/auth_token.

The Ray driver (ray.init, serve.run, the placement query) runs in a child Python process
(tests/support/ray_cluster_driver.py), so this pytest process never joins the cluster and the
integration tier's own local Ray (tests/integration/conftest.py) is left alone. The cluster's
nodes and processes are handled by tests/support/ray_cluster.py.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import requests

from clipfleet.config import FIXED_DEPLOYMENTS, AppArgs, deployment_names
from tests.support.images import image_base64
from tests.support.ray_cluster import HEAD_IP, WORKER_IP, TwoNodeCluster, tagged_processes

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs 127.0.0.x (Linux)"),
]

DEPLOY_S = 150
NOT_READY_S = 90
READY_AGAIN_S = 150


@pytest.fixture
def cluster(tmp_path):
    cluster = TwoNodeCluster()
    try:
        yield cluster
    finally:
        cluster.shutdown(keep_logs_in=tmp_path / "ray-logs")  # kept by pytest for a post-mortem
        assert not tagged_processes(cluster.tag_value), "Ray processes survived the test"


# --- the test ------------------------------------------------------------------------------


def encoders_all_lost(response: requests.Response) -> bool:
    entries = response.json().get("deployments", {})
    encoders = [entry for key, entry in entries.items() if key not in ("image_fetcher", "scorer")]
    return bool(encoders) and not any(entry["ready"] for entry in encoders)


def wait_status(
    url: str, status: int, timeout_s: float, until=lambda response: True
) -> requests.Response:
    deadline = time.monotonic() + timeout_s
    last: requests.Response | str | None = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(url, timeout=15)
            if last.status_code == status and until(last):
                return last
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    body = last.text if isinstance(last, requests.Response) else last
    raise AssertionError(f"{url} did not answer {status} within {timeout_s} s; last: {body}")


def node_of(placement: dict, ip: str) -> str:
    alive = [id_ for id_, node in placement["nodes"].items() if node["alive"] and node["ip"] == ip]
    assert len(alive) == 1, placement["nodes"]
    return alive[0]


def assert_placement(placement: dict, args: AppArgs) -> str:
    """Encoders all on the worker, the rest on the head; returns the worker's node id."""
    head, worker = node_of(placement, HEAD_IP), node_of(placement, WORKER_IP)
    replicas = placement["replicas"]
    assert set(replicas) == deployment_names(args), replicas
    for deployment, nodes in replicas.items():
        expected = head if deployment in FIXED_DEPLOYMENTS else worker
        assert nodes and set(nodes) == {expected}, (deployment, nodes, placement["nodes"])
    assert set(placement["proxies"]) == {head}, "HeadOnly: one proxy, on the head"
    return worker


def assert_serves(base_url: str) -> None:
    text = requests.post(f"{base_url}/v1/embed/text", json={"texts": ["a cat"]}, timeout=60)
    assert text.status_code == 200, text.text
    assert len(text.json()["embeddings"]) == 1
    pair = {"image": {"base64": image_base64()}, "text": "a cat"}
    score = requests.post(f"{base_url}/v1/score", json={"pairs": [pair]}, timeout=60)
    assert score.status_code == 200, score.text
    assert len(score.json()["results"]) == 1


def test_encoders_on_worker_node_and_readiness_follows_it(cluster, tiny_args):
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)

    cluster.start_head()
    cluster.start_worker()
    cluster.wait_alive_nodes(2)
    lap("two nodes up")

    cluster.driver(
        "deploy",
        str(cluster.http_port),
        json.dumps(tiny_args.model_dump(mode="json")),
        timeout_s=DEPLOY_S,
    )
    wait_status(f"{cluster.base_url}/readyz", 200, DEPLOY_S)
    lap("deployed and ready")
    first_worker = assert_placement(cluster.driver("placement", timeout_s=60), tiny_args)
    assert_serves(cluster.base_url)
    lap("placement + requests")

    cluster.worker.kill()
    # /readyz reads Serve's replica states (refreshed every second); the controller notices
    # each lost replica on its own health check, so wait until it has noticed all of them.
    not_ready = wait_status(f"{cluster.base_url}/readyz", 503, NOT_READY_S, until=encoders_all_lost)
    body = not_ready.json()
    assert body["status"] == "not_ready"
    # what lives on the head still answers; what lived on the lost node does not
    readiness = {key: entry["ready"] for key, entry in body["deployments"].items()}
    assert readiness.pop("image_fetcher") and readiness.pop("scorer"), body
    assert readiness and not any(readiness.values()), body
    assert not_ready.headers.get("Retry-After")
    assert requests.get(f"{cluster.base_url}/healthz", timeout=10).status_code == 200
    lap("worker killed -> 503")

    cluster.start_worker()
    wait_status(f"{cluster.base_url}/readyz", 200, READY_AGAIN_S)
    lap("worker restarted -> 200")
    placement = cluster.driver("placement", timeout_s=60)
    second_worker = assert_placement(placement, tiny_args)
    assert second_worker != first_worker
    assert not placement["nodes"][first_worker]["alive"]
    assert_serves(cluster.base_url)
    lap("placement + requests again")

    leftovers = cluster.shutdown()
    assert not tagged_processes(cluster.tag_value)
    lap("shutdown")
    print(f"\nmultinode timings (s): {timings}, leftovers swept: {len(leftovers)}")
