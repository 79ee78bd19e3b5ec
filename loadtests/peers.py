"""Peer benchmark (`make bench-peers`): clipfleet against infinity-emb on the same box and model.

    python -m loadtests.peers [--runs 3] [--seconds 60] [--warmup 10] [--out loadtests/results]

Setup (kept under build/peers/, git-ignored): a Hugging Face CLIP directory with ViT-B/32
shapes and RANDOM weights (loadtests/hf_clip_dir.py), a random ResNet-18 state dict (clipfleet's
profile needs one), 2,000 unique ~144 KiB JPEGs (loadtests/photos.py); infinity-emb 0.0.78 lives
in its own venv, build/peers/venv (the Makefile installs it from loadtests/peers-*.txt).

Each run measures, one server at a time (their order alternates between runs):
- infinity-emb `POST /embeddings` (`modality: image`, `--batch-size 32 --device cpu --engine
  torch`) and clipfleet `POST /v1/embeddings` (`modality: image`,
  loadtests/bench_config.peers.yaml: the fast profile on the same directory, batch 32), each
  with one base64 image per request from `--clients` clients, then `--images` images per
  request from `--multi-clients` clients; `--warmup` s of load, then `--seconds` s measured:
  img/s, latency percentiles, errors, and the server's CPU seconds per image (its whole process
  tree over the measured window: for clipfleet every Ray process `serve run` started);
- the in-process ceilings of both stacks (loadtests/ceilings.py): forward only, and decode +
  preprocess + forward; infinity's stack in its venv, clipfleet's in this one.
The results file (JSON + PNG) holds the medians and spreads over the runs (loadtests/results.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import subprocess
import sys
from pathlib import Path

import requests

from loadtests import hf_clip_dir, results
from loadtests.client import run_load
from loadtests.cputime import TreeCpu
from loadtests.photos import ensure_photos
from loadtests.report import publish
from loadtests.servers import (
    ROOT,
    prepared,
    private_forward_lease,
    start,
    start_clipfleet,
    stop_tree,
)

PEERS = ROOT / "build" / "peers"
MODEL_DIR = PEERS / "clip-vit-b-32-random"
RESNET = PEERS / "resnet18-random.pt"
PEER_PYTHON = PEERS / "venv" / "bin" / "python"
PEERS_CONFIG = ROOT / "loadtests" / "bench_config.peers.yaml"
PEERS_ONNX_CONFIG = ROOT / "loadtests" / "bench_config.peers-onnx.yaml"
PEERS_BF16_CONFIG = ROOT / "loadtests" / "bench_config.peers-bf16.yaml"
EMBEDDING_DIM = 512
TARGETS = {
    "clipfleet_over_infinity_1": results.target(
        ">=", 1.1, "clipfleet >= 1.1 x infinity's img/s, one image/request"
    ),
    "p95_clipfleet_vs_infinity_1": results.target("<=", 1.0, "... with a p95 at most infinity's"),
    "cpu_clipfleet_vs_infinity_1": results.target(
        "<=", 1.0, "... and server CPU per image at most infinity's"
    ),
    "clipfleet_over_infinity_16": results.target(
        ">=", 1.2, "clipfleet >= 1.2 x infinity's img/s, 16 images/request"
    ),
}


def setup(count: int) -> list[str]:
    """Build what is missing; the images as data URIs, in index order."""
    if not hf_clip_dir.is_built(MODEL_DIR):
        hf_clip_dir.build(MODEL_DIR)
    if not RESNET.is_file():
        import torch
        import torchvision

        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), RESNET)
    paths = ensure_photos(PEERS / "images", count)
    return [f"data:image/jpeg;base64,{base64.b64encode(p.read_bytes()).decode()}" for p in paths]


def peer_versions() -> dict:
    code = (
        "import json, importlib.metadata as m; print(json.dumps({'infinity_emb': "
        "m.version('infinity-emb'), 'infinity_transformers': m.version('transformers'), "
        "'infinity_torch': m.version('torch')}))"
    )
    output = subprocess.run([str(PEER_PYTHON), "-c", code], capture_output=True, text=True)
    return json.loads(output.stdout) if output.returncode == 0 else {"infinity_emb": None}


class Server:
    """One server under test: how to start it and what a request looks like."""

    def __init__(self, name: str, label: str, url: str, model: str, route: str) -> None:
        self.name, self.label, self.url, self.model, self.route = name, label, url, model, route

    def body(self, uris: list[str]) -> dict:
        return {
            "model": self.model,
            "input": uris,
            "modality": "image",
            "encoding_format": "base64",
        }

    def start(self) -> subprocess.Popen:
        raise NotImplementedError


class Infinity(Server):
    def __init__(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}"
        super().__init__("infinity", "infinity-emb 0.0.78", url, "clip", "/embeddings")
        self.port = port

    def start(self) -> subprocess.Popen:
        command = [
            str(PEER_PYTHON.parent / "infinity_emb"), "v2", "--model-id", str(MODEL_DIR),
            "--served-model-name", "clip", "--batch-size", "32", "--device", "cpu",
            "--engine", "torch", "--dtype", "float32", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        env = {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
        return start(command, f"{self.url}/health", 300, env, PEERS / "logs" / "infinity.log")


class Clipfleet(Server):
    def __init__(
        self, port: int, batch: int | None, name: str = "clipfleet", config: Path = PEERS_CONFIG
    ) -> None:
        url = f"http://127.0.0.1:{port}"
        super().__init__(name, name, url, "fast", "/v1/embeddings")
        self.port, self.batch, self.config = port, batch, config

    def edit(self, document: dict) -> None:
        """The overlay's repository-relative paths made absolute (Ray workers run elsewhere);
        --clipfleet-batch over the config's batch size."""
        profile = document["applications"][0]["args"]["profiles"]["fast"]
        profile["clip"]["model"] = str(MODEL_DIR)
        profile["resnet"]["weights"] = str(RESNET)
        if self.batch:
            for entry in document["applications"][0]["deployments"]:
                if entry["name"] == "clip_fast":
                    entry["user_config"]["max_batch_size"] = self.batch

    def start(self) -> subprocess.Popen:
        config = prepared(self.config, self.port, edit=self.edit)
        log = PEERS / "logs" / f"{self.name}.log"
        return start_clipfleet(config, self.url, random_weights=False, log=log)


def preflight(server: Server, uris: list[str]) -> None:
    """One request of two images: 200 and two embeddings of the model's width, or stop here."""
    response = requests.post(server.url + server.route, json=server.body(uris[:2]), timeout=120)
    response.raise_for_status()
    data = response.json()["data"]
    sizes = [len(base64.b64decode(item["embedding"])) // 4 for item in data]
    if sizes != [EMBEDDING_DIM, EMBEDDING_DIM]:
        raise RuntimeError(f"{server.name}: expected two {EMBEDDING_DIM}-d embeddings, got {sizes}")


def measure_shape(server, process, uris, per_request, clients, args) -> dict:
    images = itertools.count()  # every request takes the next unique images, round the set

    def body(_: int) -> dict:
        return server.body([uris[next(images) % len(uris)] for _ in range(per_request)])

    cpu = TreeCpu(process.pid)
    load = run_load(
        server.url + server.route, body, clients, args.seconds, args.warmup,
        on_start=cpu.start, on_end=cpu.stop,
    )  # fmt: skip
    result = asyncio.run(load)
    served = result["requests"] * per_request
    plural = "image" if per_request == 1 else "images"
    return {
        "id": f"{server.name}/{per_request}",
        "label": f"{server.label} `POST {server.route}`, {per_request} {plural}/request, "
        f"{clients} clients",
        "unit": "img/s",
        "metrics": {
            "throughput": served / result["elapsed_s"],
            **{key: result[key] for key in ("p50_ms", "p95_ms", "p99_ms", "errors")},
            "cpu_s_per_image": cpu.seconds / served if served else float("nan"),
            "client_cpu_s_per_image": result["client_cpu_s"] / served if served else float("nan"),
        },
        "errors_by_kind": result["errors_by_kind"],
    }


def measure_server(server: Server, uris: list[str], args) -> list[dict]:
    print(f"  {server.name}: starting", flush=True)
    process = server.start()
    try:
        preflight(server, uris)
        shapes = [(1, args.clients), (args.images, args.multi_clients)]
        rows = []
        for per_request, clients in shapes:
            rows.append(measure_shape(server, process, uris, per_request, clients, args))
            metrics = rows[-1]["metrics"]
            print(
                f"  {rows[-1]['label']}: {metrics['throughput']:.1f} img/s, p95 "
                f"{metrics['p95_ms'] / 1000:.2f} s, {metrics['cpu_s_per_image']:.3f} CPU s/img, "
                f"errors {rows[-1]['errors_by_kind'] or 0}",
                flush=True,
            )
        return rows
    finally:
        stop_tree(process)


# stack (loadtests/ceilings.py) -> (row id part, label)
CEILINGS = {
    "hf": ("infinity-stack", "infinity's stack in-process (its venv: AutoProcessor + CLIPModel)"),
    "clipfleet": ("clipfleet-stack", "clipfleet's model code in-process (.venv)"),
}


def measure_ceilings(args) -> list[dict]:
    rows = []
    for stack, python in (("hf", PEER_PYTHON), ("clipfleet", Path(sys.executable))):
        command = [
            str(python), "-m", "loadtests.ceilings", "--stack", stack, "--model-dir",
            str(MODEL_DIR), "--images-dir", str(PEERS / "images"), "--batch", "32",
            "--seconds", str(args.ceiling_seconds),
        ]  # fmt: skip
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        found = json.loads(output.stdout.strip().splitlines()[-1])
        for kind, what in (("forward", "forward only"), ("pipeline", "decode + preprocess + fwd")):
            rows.append(
                {
                    "id": f"ceiling/{CEILINGS[stack][0]}/{kind}",
                    "label": f"{CEILINGS[stack][1]}: {what}, batch 32",
                    "unit": "img/s",
                    "metrics": {"throughput": found[f"{kind}_img_per_s"]},
                }
            )
        print(f"  ceilings, {stack}: {found}", flush=True)
    return rows


def ratios(rows: list[dict]) -> dict[str, float]:
    def metric(row_id: str, name: str = "throughput") -> float | None:
        row = next((r for r in rows if r["id"] == row_id), None)
        return row["metrics"].get(name) if row else None

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    found = {
        "clipfleet_over_infinity_1": over(metric("clipfleet/1"), metric("infinity/1")),
        "p95_clipfleet_vs_infinity_1": over(
            metric("clipfleet/1", "p95_ms"), metric("infinity/1", "p95_ms")
        ),
        "cpu_clipfleet_vs_infinity_1": over(
            metric("clipfleet/1", "cpu_s_per_image"), metric("infinity/1", "cpu_s_per_image")
        ),
        "clipfleet_over_infinity_16": over(metric("clipfleet/16"), metric("infinity/16")),
        "clipfleet_onnx_over_infinity_1": over(metric("clipfleet-onnx/1"), metric("infinity/1")),
        "clipfleet_onnx_over_infinity_16": over(metric("clipfleet-onnx/16"), metric("infinity/16")),
        "infinity_over_own_forward_ceiling": over(
            metric("infinity/1"), metric("ceiling/infinity-stack/forward")
        ),
        "clipfleet_over_own_forward_ceiling": over(
            metric("clipfleet/1"), metric("ceiling/clipfleet-stack/forward")
        ),
    }
    return {name: value for name, value in found.items() if value is not None}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=10, help="warm-up seconds per row")
    parser.add_argument("--clients", type=int, default=32, help="clients, one image/request")
    parser.add_argument("--images", type=int, default=16, help="images per multi-image request")
    parser.add_argument(
        "--multi-clients", type=int, default=8,
        help="clients for the multi-image rows (8 x 16 = 128 images in flight, 4 batches of 32)",
    )  # fmt: skip
    parser.add_argument("--count", type=int, default=2000, help="unique JPEGs")
    parser.add_argument("--ceiling-seconds", type=float, default=20)
    parser.add_argument(
        "--only", default="infinity,clipfleet,clipfleet-onnx,clipfleet-bf16,ceilings",
        help="comma-separated parts: infinity, clipfleet (torch), clipfleet-onnx (runtime onnx "
        "fp32, loadtests/bench_config.peers-onnx.yaml), clipfleet-bf16 (precision bf16, "
        "opt-in; loadtests/bench_config.peers-bf16.yaml), ceilings",
    )  # fmt: skip
    parser.add_argument("--clipfleet-batch", type=int, default=None, help="override the config's")
    parser.add_argument("--port", type=int, default=8000, help="clipfleet's HTTP port")
    parser.add_argument("--infinity-port", type=int, default=7997)
    parser.add_argument("--label", default="full", help="full, or smoke (a harness check)")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)
    args = parser.parse_args()
    if not PEER_PYTHON.is_file() and {"infinity", "ceilings"} & set(args.only.split(",")):
        parser.error(f"{PEER_PYTHON} is missing: `make bench-peers` installs infinity-emb there")
    return args


def main() -> None:
    args = parse_args()
    parts = args.only.split(",")
    private_forward_lease()
    results.provenance()  # the commit as the runs start
    (PEERS / "logs").mkdir(parents=True, exist_ok=True)
    uris = setup(args.count)
    servers = [
        Infinity(args.infinity_port),
        Clipfleet(args.port, args.clipfleet_batch),
        Clipfleet(args.port, args.clipfleet_batch, "clipfleet-onnx", PEERS_ONNX_CONFIG),
        Clipfleet(args.port, args.clipfleet_batch, "clipfleet-bf16", PEERS_BF16_CONFIG),
    ]
    servers = [server for server in servers if server.name in parts]
    runs = []
    for number in range(args.runs):
        print(f"run {number + 1} of {args.runs}", flush=True)
        # alternate which server goes first; the rows keep one order
        measured = {
            server.name: measure_server(server, uris, args)
            for server in (servers if number % 2 == 0 else servers[::-1])
        }
        rows = [row for server in servers for row in measured[server.name]]
        runs.append(rows + (measure_ceilings(args) if "ceilings" in parts else []))
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "label")}
    settings["config"] = str(PEERS_CONFIG.relative_to(ROOT))
    settings["onnx_config"] = str(PEERS_ONNX_CONFIG.relative_to(ROOT))
    settings["bf16_config"] = str(PEERS_BF16_CONFIG.relative_to(ROOT))
    doc = results.document(
        "bench-peers", args.label, runs, [ratios(rows) for rows in runs], TARGETS, settings,
        extra_versions=peer_versions(),
    )  # fmt: skip
    publish(doc, args.out)


if __name__ == "__main__":
    main()
