"""Where a served image's CPU goes: CPU-seconds per image, per process of the server's tree.

    python -m loadtests.cpu_breakdown --peers --shape embeddings --shape embeddings16
    python -m loadtests.cpu_breakdown --shape embeddings --shape score-url    # bench_config.yaml
    python -m loadtests.cpu_breakdown --config serve_config.yaml --shape score-url
    python -m loadtests.cpu_breakdown --attach 8000 --shape embeddings        # a running server

Starts `serve run` of the config as the benchmarks do (loadtests/servers.py: its own Ray
cluster, workers at nice 0, the encoders' embedding cache off, the loopback image server allowed,
clipfleet.tools.configgen.RAY_PROCESS_ENV as `make run` sets it; random weights unless `--peers`),
or attaches to the server listening on `--attach`'s port; runs a bounded closed-loop load (warm-up,
then the measured window) and reads every process's CPU times (psutil, user + system, all
threads) before and after the window. Ray workers are grouped by the actor they host (the Serve
proxy, the controller, each deployment's replicas), the rest by program (raylet, GCS, dashboard,
...). CPU-seconds per image is robust to other load on the machine, which throughput is not; the
report also gives the machine's whole CPU use in the window and how much of it was outside the
server (other users of the cores) so a reader can judge the noise.

`--peers`: `make bench-peers`'s clipfleet (loadtests/bench_config.peers.yaml: the random-init
Hugging Face CLIP ViT-B/32 directory infinity-emb serves too, batch 32; loadtests/peers.py builds
it). Shapes: `embeddings`: POST /v1/embeddings, `modality: image`, one base64 JPEG (the peer
benchmark's unique ~144 KiB photos, loadtests/photos.py) per request, `--clients` clients;
`embeddings16`: 16 of them per request, `--multi-clients` clients; `score-url`: POST /v1/score
with one image by URL and one text per request (what `make bench` measures), `--clients` clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from loadtests import profiles, results, thread_cpu
from loadtests.bench import BENCH_CONFIG, IMAGE_PORT, PORT, clipfleet_body, image_url
from loadtests.client import run_load
from loadtests.peers import PEERS, PEERS_CONFIG, Clipfleet, setup
from loadtests.photos import ensure_photos
from loadtests.servers import default_profile, prepared, start, start_clipfleet, stop_tree

SHAPES = {"embeddings": 1, "embeddings16": 16, "score-url": 1}
# What --py-spy records (the busy processes of the request path).
PROFILED = {"serve proxy", "Ingress", "ImageFetcher", "clip_fast", "Scorer"}


def data_uris(count: int) -> list[str]:
    paths = ensure_photos(PEERS / "images", count)
    return [f"data:image/jpeg;base64,{base64.b64encode(p.read_bytes()).decode()}" for p in paths]


def body_maker(shape: str, profile: str, uris: list[str]):
    per_request = SHAPES[shape]
    if shape == "score-url":
        return clipfleet_body

    def body(n: int) -> dict:
        first = (n * per_request) % len(uris)
        items = [uris[(first + i) % len(uris)] for i in range(per_request)]
        return {"model": profile, "modality": "image", "input": items}

    return body


# -- processes ---------------------------------------------------------------------------------
_REPLICA = re.compile(r"ray::ServeReplica:[^:\s]+:([^.\s]+)")
_NAMED = [
    (re.compile(r"ray::ProxyActor"), "serve proxy"),
    (re.compile(r"ray::ServeController"), "serve controller"),
    (re.compile(r"raylet"), "raylet"),
    (re.compile(r"gcs_server"), "gcs"),
    (
        re.compile(r"[Dd]ashboard|agent|Agent|log_monitor|monitor\.py"),
        "dashboard, agents, log monitor",
    ),
    (re.compile(r"ray::IDLE|default_worker"), "idle ray workers"),
    (re.compile(r"serve run|\bserve\b"), "serve run driver"),
]


def label_of(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "gone"
    match = _REPLICA.search(title)
    if match:
        return match.group(1)
    for pattern, label in _NAMED:
        if pattern.search(title):
            return label
    return f"other: {proc.name()}"


def server_root(port: int) -> psutil.Process:
    """The topmost process of the tree serving `port` (the `serve run` driver or the node)."""
    listener = next(
        (
            c.pid
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
        ),
        None,
    )
    if listener is None:
        raise SystemExit(f"nothing listens on port {port}")
    proc = psutil.Process(listener)
    while proc.parent() is not None and _is_ray(proc.parent()):
        proc = proc.parent()
    return proc


def _is_ray(proc: psutil.Process) -> bool:
    try:
        title = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "ray" in title or "serve" in title


class ProcessCpu:
    """CPU seconds (user + system) of every process in a tree, labelled once when first seen
    as something other than an idle worker (Ray workers retitle themselves per call)."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.labels: dict[int, str] = {}

    def snapshot(self) -> dict[int, float]:
        found = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            if self.labels.get(proc.pid, "idle ray workers") == "idle ray workers":
                self.labels[proc.pid] = label_of(proc)
            found[proc.pid] = times.user + times.system
        return found

    def grouped(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        groups: Counter[str] = Counter()
        for pid, seconds in after.items():
            groups[self.labels[pid]] += seconds - before.get(pid, 0.0)
        return dict(groups)


def machine_busy_s() -> float:
    times = psutil.cpu_times()  # guest time is already counted in user
    return times.user + times.nice + times.system + times.irq + times.softirq


def measure(
    url: str,
    body,
    clients: int,
    seconds: float,
    warmup_s: float,
    tree: ProcessCpu,
    per_request: int,
    profile_to: Path | None = None,
    profile_labels: frozenset[str] = frozenset(PROFILED),
    thread_labels: frozenset[str] = frozenset(),
) -> dict:
    """One load window; with `profile_to`, py-spy records the `profile_labels` processes; the
    `thread_labels` processes' CPU is also split by thread (loadtests/thread_cpu.py)."""
    if warmup_s:
        asyncio.run(run_load(url, body, clients, warmup_s))
    me = psutil.Process()
    before, busy, mine = tree.snapshot(), machine_busy_s(), sum(me.cpu_times()[:2])
    split = {
        label: [pid for pid, named in tree.labels.items() if named == label]
        for label in thread_labels
    }
    threads_before = {label: thread_cpu.snapshot(pids) for label, pids in split.items()}
    recording = []
    if profile_to is not None:
        targets = {pid: label for pid, label in tree.labels.items() if label in profile_labels}
        recording = profiles.start_recording(targets, profile_to, seconds)
    load = asyncio.run(run_load(url, body, clients, seconds))
    after, busy, mine = tree.snapshot(), machine_busy_s() - busy, sum(me.cpu_times()[:2]) - mine
    threads_after = {label: thread_cpu.snapshot(pids) for label, pids in split.items()}
    summaries = profiles.finish(recording)
    images = load["requests"] * per_request
    threads = {
        label: thread_cpu.per_thread(threads_before[label], threads_after[label], images)
        for label in split
    }
    groups = tree.grouped(before, after)
    server_s = sum(groups.values())
    return {
        **load,
        "images": images,
        "images_per_s": images / seconds,
        "server_cpu_s_per_image": server_s / images if images else float("nan"),
        "cpu_s_per_image": {
            label: round(value / images, 5) if images else None
            for label, value in sorted(groups.items(), key=lambda item: -item[1])
        },
        "window_s": seconds,
        "server_cpu_s": round(server_s, 2),
        "load_generator_cpu_s": round(mine, 2),
        "machine_busy_cpu_s": round(busy, 2),
        "outside_server_cpu_s": round(busy - server_s - mine, 2),
        "machine_cores": psutil.cpu_count(),
        **({"py_spy": summaries} if summaries else {}),
        **({"threads": threads} if threads else {}),
    }


def print_report(shape: str, result: dict) -> None:
    print(
        f"\n{shape}: {result['images_per_s']:.1f} img/s, p50 {result['p50_ms'] / 1000:.2f} s, "
        f"p95 {result['p95_ms'] / 1000:.2f} s, {result['errors']} errors; server "
        f"{result['server_cpu_s_per_image'] * 1000:.1f} CPU-ms per image"
    )
    for label, value in result["cpu_s_per_image"].items():
        if value and value * 1000 >= 0.05:
            print(f"  {label:34s} {value * 1000:8.1f} ms")
    outside = result["outside_server_cpu_s"] / result["window_s"]
    print(
        f"  (machine: {result['machine_busy_cpu_s'] / result['window_s']:.2f} of "
        f"{result['machine_cores']} cores busy, {outside:.2f} of them outside the server and "
        "the load generator)"
    )
    for label, by_thread in result.get("threads", {}).items():
        print(f"  {label}, by thread:")
        for name, value in by_thread.items():
            if value * 1000 >= 0.05:
                print(f"    {name:32s} {value * 1000:8.1f} ms")
    profiles.print_summaries(result.get("py_spy", {}))


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """`serve run` of the config as the benchmarks run it; (process, default profile)."""
    url = f"http://127.0.0.1:{PORT}"
    if args.peers:
        setup(args.images)  # the model directory and ResNet file it names
        config = prepared(PEERS_CONFIG, PORT, IMAGE_PORT, edit=Clipfleet(PORT, None).edit)
        return start_clipfleet(config, url, random_weights=False), "fast"
    config = prepared(args.config, PORT, IMAGE_PORT)
    return start_clipfleet(config, url), default_profile(args.config)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--config", type=Path, default=BENCH_CONFIG)
    parser.add_argument("--peers", action="store_true", help="make bench-peers's clipfleet")
    parser.add_argument("--attach", type=int, help="port of a running server to measure")
    parser.add_argument("--profile", default="fast", help="with --attach: the model to ask for")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--multi-clients", type=int, default=8, help="clients for embeddings16 (8 x 16 in flight)"
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--images", type=int, default=2000, help="distinct base64 images")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--py-spy", type=Path, help="record py-spy profiles into this folder")
    parser.add_argument(
        "--py-spy-labels",
        default=",".join(sorted(PROFILED)),
        help="the process groups --py-spy records (labels as the report prints them)",
    )
    parser.add_argument(
        "--threads",
        default="",
        help="process groups whose CPU is also split by thread, e.g. clip_fast (comma-separated)",
    )
    args = parser.parse_args()
    results.provenance()  # the code measured is the code as it starts
    shapes = args.shape or ["embeddings"]
    uris = data_uris(args.images) if any(s != "score-url" for s in shapes) else []
    images = None
    if "score-url" in shapes:
        command = [sys.executable, "-m", "loadtests.images", "--port", str(IMAGE_PORT)]
        images = start(command, image_url(0), 60)
    serve: subprocess.Popen | None = None
    try:
        port, profile = args.attach, args.profile
        if port is None:
            (serve, profile), port = start_server(args), PORT
        tree = ProcessCpu(psutil.Process(serve.pid) if serve else server_root(port))
        config = str(PEERS_CONFIG if args.peers else args.config)
        commit, dirty = results.provenance()
        report = {
            "kind": "cpu-breakdown",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit,
            "dirty": dirty,
            "command": " ".join(["python -m loadtests.cpu_breakdown", *sys.argv[1:]]),
            "machine": results.machine(),
            "versions": results.versions(),
            "config": config,
            "shapes": {},
        }
        for shape in shapes:
            route = "/v1/score" if shape == "score-url" else "/v1/embeddings"
            result = measure(
                f"http://127.0.0.1:{port}{route}",
                body_maker(shape, profile, uris),
                args.multi_clients if SHAPES[shape] > 1 else args.clients,
                args.seconds,
                args.warmup,
                tree,
                SHAPES[shape],
                args.py_spy / shape if args.py_spy else None,
                frozenset(args.py_spy_labels.split(",")),
                frozenset(label for label in args.threads.split(",") if label),
            )
            report["shapes"][shape] = result
            print_report(shape, result)
    finally:
        if serve is not None:
            stop_tree(serve)
        if images is not None:
            stop_tree(images)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print(f"\nat {time.strftime('%Y-%m-%d %H:%M')}: {report['command']}")


if __name__ == "__main__":
    main()
