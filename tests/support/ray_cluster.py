"""A two-node Ray cluster on this machine, for the multinode tests (see
tests/integration/test_multinode.py for the topology): each node a `ray start --block` in its
own session with its own 127.0.0.x address, stopped by killing its whole process tree; the
Ray driver runs in a child process (tests/support/ray_cluster_driver.py), so the pytest process
never joins the cluster.
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

from clipfleet.tools.processes import stop_tree
from tests.support.servers import free_port

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
        stop_tree(self.process, grace_s=0)

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
        """Run tests/support/ray_cluster_driver.py against the cluster; returns its result."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tests.support.ray_cluster_driver", self.address, *args],
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
