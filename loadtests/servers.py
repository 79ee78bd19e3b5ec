"""Starting the benchmarks' servers: clipfleet (`serve run` of a prepared config copy) and any
other command that answers HTTP when ready; each is stopped with its whole process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
import yaml

from clipfleet.config import FIXED_DEPLOYMENTS, AppArgs, FetchLimits, deployment_names
from clipfleet.tools.configgen import RAY_PROCESS_ENV
from clipfleet.tools.processes import stop_tree

ROOT = Path(__file__).resolve().parents[1]


def start(
    command: list[str],
    ready_url: str,
    timeout_s: float,
    env: dict | None = None,
    log: Path | None = None,
) -> subprocess.Popen:
    """Start `command` in its own session and wait until `ready_url` answers 200. Its output
    goes to `log` (appended) or nowhere."""
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    if log:
        output.close()
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(ready_url, timeout=5).status_code == 200:
                name = " ".join(Path(part).name for part in command[:3])
                print(f"  {name} ready in {time.monotonic() - started:.0f} s", flush=True)
                return process
        except requests.RequestException:
            pass
        if process.poll() is not None:
            where = f"; see {log}" if log else ""
            raise RuntimeError(f"{command[0]} exited with {process.returncode}{where}")
        time.sleep(1)
    stop_tree(process)
    raise RuntimeError(f"{' '.join(command)} not ready within {timeout_s} s")


def private_forward_lease() -> None:
    """Give this benchmark and everything it starts a forward lease of their own
    (CLIPFLEET_LEASE_DIR, docs/performance.md): the lease is per node, so on a machine shared with
    other clipfleet processes (a test suite, another benchmark) their CPU forwards would take
    turns with the measured ones. Kept when the caller set it."""
    os.environ.setdefault("CLIPFLEET_LEASE_DIR", tempfile.mkdtemp(prefix="clipfleet-bench-lease-"))


def start_clipfleet(
    config: Path, url: str, random_weights: bool = True, log: Path | None = None
) -> subprocess.Popen:
    serve = Path(sys.executable).parent / "serve"
    # Ray runs its workers at nice 15 (RAY_worker_niceness) so the raylet stays responsive; the
    # ceilings, the peers and the load generator run at nice 0, so give clipfleet the same.
    # RAY_ADDRESS=local: a cluster of its own, never one that `ray start` left on this machine.
    # RAY_PROCESS_ENV: every Ray process as `make run` starts it (the Serve proxy's included).
    env = {**RAY_PROCESS_ENV, "RAY_worker_niceness": "0", "RAY_ADDRESS": "local"}
    if random_weights:
        env["CLIPFLEET_RANDOM_WEIGHTS"] = "1"
    # serve_config.yaml starts five encoders (ViT-L-14 among them): give it time on 2 cores
    return start([str(serve), "run", str(config)], f"{url}/readyz", 900, env, log)


def app_args(config: Path) -> AppArgs:
    """The config's validated args (what it leaves out: the code's defaults)."""
    return AppArgs(**yaml.safe_load(config.read_text())["applications"][0]["args"])


def default_profile(config: Path) -> str:
    return app_args(config).default_profile


def prepared(
    config: Path,
    port: int,
    image_port: int | None = None,
    cache: bool = False,
    edit: Callable[[dict], None] | None = None,
) -> Path:
    """A copy of `config` as a benchmark runs it: HTTP on `port`, the loopback image server on
    `image_port` allowed by the SSRF policy, every encoder's embedding cache on or off (off:
    every request reaches a model, the fair comparison with an in-process pipeline), then
    `edit(document)` for anything else."""
    document = yaml.safe_load(config.read_text())
    document.setdefault("http_options", {})["port"] = port
    app = document["applications"][0]
    if image_port is not None:
        fetch = app["args"].setdefault("fetch", {})
        networks = fetch.get("allow_private_networks", [])
        fetch["allow_private_networks"] = sorted({*networks, "127.0.0.1/32"})
        allowed = fetch.get("allowed_ports", FetchLimits().allowed_ports)
        fetch["allowed_ports"] = sorted({*allowed, image_port})
    # every encoder the args produce, listed in the config or running on the code's defaults
    entries = {entry["name"]: entry for entry in app.setdefault("deployments", [])}
    for name in sorted(deployment_names(app_args(config)) - set(FIXED_DEPLOYMENTS)):
        if name not in entries:
            entries[name] = {"name": name}
            app["deployments"].append(entries[name])
        entries[name].setdefault("user_config", {})["cache"] = {"enabled": cache}
    if edit:
        edit(document)
    folder = Path(tempfile.mkdtemp(prefix="clipfleet-bench-"))
    prepared_config = folder / f"{config.stem}{'_cache' if cache else ''}.yaml"
    prepared_config.write_text(yaml.safe_dump(document))
    return prepared_config


__all__ = [
    "app_args",
    "default_profile",
    "prepared",
    "private_forward_lease",
    "start",
    "start_clipfleet",
    "stop_tree",
]
