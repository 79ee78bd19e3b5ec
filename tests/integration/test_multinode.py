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

The Ray driver (ray.init, serve.run, the placement query) runs in a child Python process (this
file's `__main__`), so this pytest process never joins the cluster and the integration tier's
own local Ray (tests/integration/conftest.py) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from clipfleet.config import AppArgs
from tests.support.images import image_base64
from tests.support.servers import free_port
from tests.unit.test_serve_config import FIXED_DEPLOYMENTS, deployment_names

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs 127.0.0.x (Linux)"),
]

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
PROXY_HOST = "127.0.0.1"
APP_NAME = "clipfleet"
TAG = "CLIPFLEET_MULTINODE_TEST"  # env marker inherited by every process of the test cluster
INGRESS_RESOURCE, ENCODER_RESOURCE = "ingress_node", "encoder_node"
ENCODER_OPTIONS = {"num_cpus": 0.25, "resources": {ENCODER_RESOURCE: 1}}
HEAD_OPTIONS = {"num_cpus": 0.25, "resources": {INGRESS_RESOURCE: 1}}
RESULT = "RESULT:"
STARTED = "Ray runtime started"
NODE_UP_S = 90
DEPLOY_S = 150
NOT_READY_S = 90
READY_AGAIN_S = 150


# --- process handling ----------------------------------------------------------------------


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, suspending them first so nothing forks."""
    found: dict[int, psutil.Process] = {}
    for _ in range(3):
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for proc in tree:
            if proc.pid not in found:
                with contextlib.suppress(psutil.Error):
                    proc.suspend()
                    found[proc.pid] = proc
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(found.values()), timeout=15)


def tagged_processes(tag_value: str) -> list[psutil.Process]:
    tagged = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(TAG) == tag_value:
                tagged.append(proc)
    return tagged


class RayNode:
    def __init__(self, name: str, args: list[str], env: dict, temp_root: Path) -> None:
        self.name = name
        self.log_path = temp_root / f"{name}.log"
        ports = {
            "node-manager-port": free_port(),
            "object-manager-port": free_port(),
            "dashboard-agent-listen-port": free_port(),
            "dashboard-agent-grpc-port": free_port(),
            "metrics-export-port": free_port(),
            "runtime-env-agent-port": free_port(),
        }
        command = [
            str(RAY),
            "start",
            "--block",
            "--disable-usage-stats",
            "--num-cpus=2",
            "--object-store-memory=100000000",
            f"--temp-dir={temp_root / name}",
            "--min-worker-port=0",  # 0/0: workers take ports the OS picks
            "--max-worker-port=0",
            *(f"--{flag}={port}" for flag, port in ports.items()),
            *args,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def kill(self) -> None:
        kill_tree(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_started(self, timeout_s: float) -> bool:
        """True once `ray start` says the node runs; False if it exited or ran out of time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if STARTED in self.log_path.read_text(errors="replace"):
                return True
            time.sleep(0.5)
        return False


class TwoNodeCluster:
    def __init__(self) -> None:
        self.temp_root = Path(tempfile.mkdtemp(prefix="cfray-", dir="/tmp"))  # short socket paths
        self.tag_value = secrets.token_hex(8)
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.http_port = free_port()
        self.base_url = f"http://{PROXY_HOST}:{self.http_port}"
        self.env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        self.env.update(
            {
                TAG: self.tag_value,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_USAGE_STATS_ENABLED": "0",
                # tests/conftest.py sets this to 0 (single-node Ray on loopback); `ray start
                # --address` refuses to add a node unless it is 1. The 127.0.0.x node addresses
                # keep this cluster on loopback all the same.
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
                # fixed defaults (44217, 44227) would collide with any other Ray on the machine
                "AUTOSCALER_METRIC_PORT": str(free_port()),
                "DASHBOARD_METRIC_PORT": str(free_port()),
            }
        )
        self.nodes: list[RayNode] = []
        self.worker: RayNode | None = None

    def start(self, make_node, attempts: int = 2) -> None:
        """Start a node and wait until it runs. `ray start` gives a raylet 30 s to register with
        the GCS, which a busy 2-core machine can exceed: such a node is started once more."""
        for _ in range(attempts):
            node = make_node()
            if node.wait_started(NODE_UP_S):
                return
            log = node.log_tail()
            node.kill()
        raise AssertionError(f"{node.name} did not start in {attempts} attempts:\n{log}")

    def start_head(self) -> None:
        self.start(self._head)

    def start_worker(self) -> None:
        self.start(self._worker)

    def _head(self) -> RayNode:
        args = [
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--resources={json.dumps({INGRESS_RESOURCE: 8})}",
        ]
        self.nodes.append(RayNode(f"head{len(self.nodes)}", args, self.env, self.temp_root))
        return self.nodes[-1]

    def _worker(self) -> RayNode:
        args = [
            f"--address={self.address}",
            f"--node-ip-address={WORKER_IP}",
            f"--resources={json.dumps({ENCODER_RESOURCE: 4})}",
        ]
        self.worker = RayNode(f"worker{len(self.nodes)}", args, self.env, self.temp_root)
        self.nodes.append(self.worker)
        return self.worker

    def driver(self, *args: str, timeout_s: float) -> dict:
        """Run this file's __main__ as a Ray driver against the cluster; returns its result."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tests.integration.test_multinode", self.address, *args],
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"driver {args[0]} ran over {timeout_s} s:\n{exc.stderr}") from exc
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
        assert done.returncode == 0 and lines, (
            f"driver {args[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-5000:]}"
        )
        return json.loads(lines[-1][len(RESULT) :])

    def wait_alive_nodes(self, count: int) -> dict:
        deadline = time.monotonic() + NODE_UP_S
        while True:
            placement = self.driver("placement", timeout_s=NODE_UP_S)
            if sum(node["alive"] for node in placement["nodes"].values()) == count:
                return placement
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)
                raise AssertionError(f"{count} nodes not alive: {placement}\n{logs}")
            time.sleep(1)

    def shutdown(self, keep_logs_in: Path | None = None) -> list[psutil.Process]:
        for node in reversed(self.nodes):
            node.kill()
        leftovers = tagged_processes(self.tag_value)
        for proc in leftovers:  # e.g. orphans of a `ray start` that died on its own
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        if keep_logs_in is not None and self.temp_root.exists():
            for path in self.temp_root.rglob("*"):
                if (
                    path.suffix in {".log", ".out", ".err"}
                    and path.is_file()
                    and not path.is_symlink()
                ):
                    target = keep_logs_in / path.relative_to(self.temp_root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
        shutil.rmtree(self.temp_root, ignore_errors=True)
        return leftovers


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


# --- the driver: `python -m tests.integration.test_multinode ADDRESS deploy|placement ...` ---


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
