"""clipfleet benchmark: naive pipeline, in-process ceiling, seed-style baseline, clipfleet.

    python -m loadtests.bench [--seconds 30] [--out results/bench.json]      # or: make bench

0. naive: the in-process pipeline a user writes with stock open_clip calls (loadtests/naive.py:
   PIL decode, open_clip preprocess, encode_image / encode_text at batch 32, one process);
1. ceiling: decode + preprocess + batched forward (image and text) of the fast profile's CLIP
   (random-init ViT-B-32) in this process, using every core: the physical limit here;
2. baseline: loadtests/baseline_server.py (seed 004's code path: one process, one request at a
   time, stock open_clip calls), 32 clients;
3. clipfleet: `serve run loadtests/bench_config.yaml` over HTTP, POST /v1/score with one
   image by URL (from a loopback image server) at 1, 8, 32 and 64 clients: throughput,
   p50/p95/p99, mean encoder batch size, machine CPU use; then 32 clients over only 8
   distinct images (a workload with repeats, served by the embedding cache);
   The same /v1/score workload at 32 clients with `make run`'s own config (serve_config.yaml)
   and with the fast-int8 overlay (serve_config.fast-int8.yaml); each config is run with the
   loopback image server allowed, the embedding cache off and the HTTP port from --port;
4. the ratios: clipfleet / ceiling, make run / naive, make run / baseline, fast-int8 / naive.
Everything runs on loopback, bounded in time; random weights (CLIPFLEET_RANDOM_WEIGHTS=1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import torch
import yaml

from clipfleet.config import (
    FIXED_DEPLOYMENTS,
    AppArgs,
    ClipModelSpec,
    EncoderConfig,
    FetchLimits,
    clip_deployment_name,
    deployment_names,
)
from clipfleet.imaging import decode_image
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device, set_torch_threads
from clipfleet.processes import stop_tree
from loadtests.client import run_load
from loadtests.images import make_library
from loadtests.naive import measure_naive

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PORT, BASELINE_PORT, CLIPFLEET_URL = 8091, 8095, "http://127.0.0.1:8000"
BENCH_CONFIG = ROOT / "loadtests" / "bench_config.yaml"
SERVE_CONFIG = ROOT / "serve_config.yaml"
INT8_CONFIG = ROOT / "serve_config.fast-int8.yaml"
PARTS = ("naive", "ceiling", "baseline", "make-run", "bench", "fast-int8", "repeats")
TEXTS = ["a photo of a cat", "a dog on a beach", "a red car", "a bowl of fruit"]
FAST = ClipModelSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k")


def measure_ceiling(seconds: float, batch_size: int, device: str | None) -> dict:
    set_torch_threads(os.cpu_count() or 1)
    model = load_clip_model(FAST, choose_device(device), random_weights=True)
    images = [data for data, _ in make_library().values()]
    limits = FetchLimits()
    model.embed_images([decode_image(images[0], limits)])  # warm-up
    done, index, started = 0, 0, time.monotonic()
    while time.monotonic() - started < seconds:
        chunk = [images[(index + i) % len(images)] for i in range(batch_size)]
        pixels = [model.preprocess_image(decode_image(data, limits)) for data in chunk]
        model.encode_images(pixels)
        model.encode_texts([TEXTS[(index + i) % len(TEXTS)] for i in range(batch_size)])
        done += batch_size
        index += batch_size
    return {
        "pairs_per_s": done / (time.monotonic() - started),
        "batch_size": batch_size,
        "device": model.info.device,
    }


def start(command: list[str], ready_url: str, timeout_s: float, env: dict | None = None):
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(ready_url, timeout=5).status_code == 200:
                return process
        except requests.RequestException:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}")
        time.sleep(1)
    stop_tree(process)
    raise RuntimeError(f"{' '.join(command)} not ready within {timeout_s} s")


def start_clipfleet(config: Path) -> subprocess.Popen:
    serve = Path(sys.executable).parent / "serve"
    # Ray runs its workers at nice 15 (RAY_worker_niceness) so the raylet stays responsive; the
    # ceiling, the baseline and the load generator run at nice 0, so give clipfleet the same.
    # RAY_ADDRESS=local: a cluster of its own, never one that `ray start` left on this machine.
    env = {"CLIPFLEET_RANDOM_WEIGHTS": "1", "RAY_worker_niceness": "0", "RAY_ADDRESS": "local"}
    # serve_config.yaml starts five encoders (ViT-L-14 among them): give it time on 2 cores
    return start([str(serve), "run", str(config)], f"{CLIPFLEET_URL}/readyz", 900, env)


def prepared(config: Path, cache: bool = False) -> Path:
    """The config as the benchmark runs it: HTTP on CLIPFLEET_URL's port, the loopback image
    server allowed by the SSRF policy, and every encoder's embedding cache on or off (off: every
    request reaches a model, the fair comparison with the naive pipeline)."""
    document = yaml.safe_load(config.read_text())
    document.setdefault("http_options", {})["port"] = int(CLIPFLEET_URL.rsplit(":", 1)[1])
    app = document["applications"][0]
    fetch = app["args"].setdefault("fetch", {})
    fetch["allow_private_networks"] = [*fetch.get("allow_private_networks", []), "127.0.0.1/32"]
    allowed = fetch.get("allowed_ports", FetchLimits().allowed_ports)
    fetch["allowed_ports"] = sorted({*allowed, IMAGE_PORT})
    # every encoder the args produce, listed in the config or running on the code's defaults
    entries = {entry["name"]: entry for entry in app.setdefault("deployments", [])}
    for name in sorted(deployment_names(app_args(config)) - set(FIXED_DEPLOYMENTS)):
        if name not in entries:
            entries[name] = {"name": name}
            app["deployments"].append(entries[name])
        entries[name].setdefault("user_config", {})["cache"] = {"enabled": cache}
    folder = Path(tempfile.mkdtemp(prefix="clipfleet-bench-"))
    prepared_config = folder / f"{config.stem}{'_cache' if cache else ''}.yaml"
    prepared_config.write_text(yaml.safe_dump(document))
    return prepared_config


def with_cache(config: Path) -> Path:
    """The same config with the encoders' embedding cache on."""
    return prepared(config, cache=True)


def image_url(n: int) -> str:
    return f"http://127.0.0.1:{IMAGE_PORT}/img/{n % 64}.{('jpg', 'png', 'webp')[n % 64 % 3]}"


def clipfleet_body(n: int) -> dict:
    return {"pairs": [{"image": {"url": image_url(n)}, "text": TEXTS[n % len(TEXTS)]}]}


def repeated_body(n: int) -> dict:
    """A scoring workload with repeats: 8 distinct images, so the embedding cache answers."""
    return clipfleet_body(n % 8)


def baseline_body(n: int) -> dict:
    return {"image_url": image_url(n), "text": TEXTS[n % len(TEXTS)]}


def app_args(config: Path) -> AppArgs:
    """The config's validated args (what it leaves out: the code's defaults)."""
    return AppArgs(**yaml.safe_load(config.read_text())["applications"][0]["args"])


def default_profile(config: Path) -> str:
    return app_args(config).default_profile


def batch_counts(profile: str = "fast") -> dict[str, dict[str, int]]:
    """Forward batch sizes so far, per kind (image, text), of a profile's stable CLIP."""
    model = requests.get(f"{CLIPFLEET_URL}/v1/models/{profile}/stable", timeout=30).json()
    encoder = model["clip"]["stable"]
    return {"image": encoder["batch_sizes"], "text": encoder.get("text_batch_sizes", {})}


def configured_max_batch(config: Path) -> int:
    """The default profile's stable CLIP batch size: its user_config, else EncoderConfig's."""
    document = yaml.safe_load(config.read_text())
    deployments = document["applications"][0].get("deployments") or []
    name = clip_deployment_name(default_profile(config), "stable")
    clip = next((d for d in deployments if d["name"] == name), {})
    return EncoderConfig(**(clip.get("user_config") or {})).max_batch_size


def mean_batch(before: dict[str, int], after: dict[str, int]) -> float:
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    batches = sum(new.values())
    return sum(size * count for size, count in new.items()) / batches if batches else 0.0


def measure(url: str, body, clients: int, seconds: float) -> dict:
    psutil.cpu_percent()
    result = asyncio.run(run_load(url, body, clients, seconds, warmup_s=min(5, seconds / 3)))
    return {**result, "cpu_percent": psutil.cpu_percent()}


def measure_config(config: Path, levels: list[int], seconds: float) -> list[dict]:
    """Start clipfleet with `config`, load /v1/score at each level, stop it."""
    profile = default_profile(config)
    serve = start_clipfleet(prepared(config))
    try:
        results = []
        for clients in levels:
            before = batch_counts(profile)
            result = measure(f"{CLIPFLEET_URL}/v1/score", clipfleet_body, clients, seconds)
            after = batch_counts(profile)
            result["mean_batch_size"] = mean_batch(before["image"], after["image"])
            result["mean_text_batch_size"] = mean_batch(before["text"], after["text"])
            results.append(result)
        return results
    finally:
        stop_tree(serve)


def at_clients(results: list[dict], clients: int) -> dict:
    return next((r for r in results if r["clients"] == clients), results[-1])


def _over(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN when nothing succeeded below (a row with 0 requests)."""
    return numerator / denominator if denominator else float("nan")


def ratios(report: dict) -> dict[str, float]:
    """Every ratio the parts run allow (targets: docs in loadtests/RESULTS.md)."""
    found: dict[str, float] = {}
    naive = report.get("naive", {}).get("pairs_per_s")
    baseline = report.get("baseline")
    systems = report.get("systems", {})
    if "bench" in systems:
        best = max(systems["bench"], key=lambda r: r["throughput_rps"])
        at32 = at_clients(systems["bench"], 32)
        found["mean_batch_over_max_at_32"] = _over(
            at32["mean_batch_size"], report["max_batch_size"]
        )
        if "ceiling" in report:
            found["clipfleet_over_ceiling"] = _over(
                best["throughput_rps"], report["ceiling"]["pairs_per_s"]
            )
        if baseline:
            found["clipfleet_over_baseline_at_32"] = _over(
                at32["throughput_rps"], baseline["throughput_rps"]
            )
            found["p95_clipfleet_vs_baseline_at_32"] = _over(at32["p95_ms"], baseline["p95_ms"])
        if naive:
            found["bench_config_over_naive_at_32"] = _over(at32["throughput_rps"], naive)
    if "make-run" in systems:
        at32 = at_clients(systems["make-run"], 32)
        if naive:
            found["make_run_over_naive_at_32"] = _over(at32["throughput_rps"], naive)
        if baseline:
            found["make_run_over_baseline_at_32"] = _over(
                at32["throughput_rps"], baseline["throughput_rps"]
            )
            found["p95_make_run_vs_baseline_at_32"] = _over(at32["p95_ms"], baseline["p95_ms"])
    if "fast-int8" in systems and naive:
        found["fast_int8_over_naive_at_32"] = _over(
            at_clients(systems["fast-int8"], 32)["throughput_rps"], naive
        )
    return found


def run(
    seconds: float, levels: list[int], config: Path, device: str | None, parts: set[str]
) -> dict:
    python = sys.executable
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "config": str(config),
        "max_batch_size": configured_max_batch(config),
        "systems": {},
    }
    library = [data for data, _ in make_library().values()]
    if "naive" in parts:
        report["naive"] = measure_naive(library, TEXTS, seconds)
    if "ceiling" in parts:
        report["ceiling"] = measure_ceiling(seconds, 16, device)
    images = start([python, "-m", "loadtests.images", "--port", str(IMAGE_PORT)], image_url(0), 60)
    try:
        if "baseline" in parts:
            baseline = start(
                [python, "-m", "loadtests.baseline_server", "--port", str(BASELINE_PORT)],
                f"http://127.0.0.1:{BASELINE_PORT}/docs",
                120,
            )
            try:
                report["baseline"] = measure(
                    f"http://127.0.0.1:{BASELINE_PORT}/score", baseline_body, 32, seconds
                )
            finally:
                stop_tree(baseline)
        systems = [("make-run", SERVE_CONFIG, [32]), ("bench", config, levels)]
        systems.append(("fast-int8", INT8_CONFIG, [32]))
        for name, system_config, system_levels in systems:
            if name in parts:
                report["systems"][name] = measure_config(system_config, system_levels, seconds)
        if "repeats" in parts:
            serve = start_clipfleet(with_cache(config))
            try:
                report["clipfleet_repeats_32"] = measure(
                    f"{CLIPFLEET_URL}/v1/score", repeated_body, 32, seconds
                )
            finally:
                stop_tree(serve)
    finally:
        stop_tree(images)
    report["clipfleet"] = report["systems"].get("bench", [])  # the key earlier runs used
    report["ratios"] = ratios(report)
    return report


SYSTEM_LABELS = {
    "make-run": "clipfleet serve_config",
    "bench": "clipfleet bench_config",
    "fast-int8": "clipfleet fast-int8",
}


def print_table(report: dict) -> None:
    for key, label in (("naive", "naive in-process"), ("ceiling", "ceiling (clipfleet code)")):
        if key in report:
            row = report[key]
            print(f"{label}: {row['pairs_per_s']:.1f} pairs/s (batch {row['batch_size']})")
    print(f"bench config encoder max_batch_size: {report['max_batch_size']}")
    header = f"{'system':<26}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    print(header + f"{'batch':>7}{'cpu %':>7}{'errors':>8}")
    rows = [("baseline (seed-style)", report["baseline"])] if "baseline" in report else []
    for name, results in report["systems"].items():
        rows += [(SYSTEM_LABELS[name], r) for r in results]
    for name, r in rows:
        print(
            f"{name:<26}{r['clients']:>8}{r['throughput_rps']:>9.1f}{r['p50_ms']:>9.0f}"
            f"{r['p95_ms']:>9.0f}{r['p99_ms']:>9.0f}{r.get('mean_batch_size', 1):>7.1f}"
            f"{r['cpu_percent']:>7.0f}{r['errors']:>8}"
        )
        if r.get("errors_by_kind"):
            print(f"{'':<26}errors: {r['errors_by_kind']}")
    if "clipfleet_repeats_32" in report:
        repeats = report["clipfleet_repeats_32"]
        print(
            f"clipfleet, 8 repeated images (embedding cache), 32 clients: "
            f"{repeats['throughput_rps']:.1f} req/s, p95 {repeats['p95_ms']:.0f} ms, "
            f"{repeats['errors']} errors"
        )
    for key, value in report["ratios"].items():
        print(f"{key}: {value:.2f}")


def main() -> None:
    global IMAGE_PORT, BASELINE_PORT, CLIPFLEET_URL
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--out", type=Path, default=Path("results/bench.json"))
    parser.add_argument(
        "--config", type=Path, default=BENCH_CONFIG, help="the clipfleet Serve config to run"
    )
    parser.add_argument(
        "--device", default=None, help="the ceiling's device: cpu, cuda (default: CUDA if any)"
    )
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {PARTS}"
    )
    parser.add_argument("--port", type=int, default=8000, help="clipfleet's HTTP port")
    parser.add_argument("--image-port", type=int, default=IMAGE_PORT)
    parser.add_argument("--baseline-port", type=int, default=BASELINE_PORT)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    IMAGE_PORT, BASELINE_PORT = args.image_port, args.baseline_port
    CLIPFLEET_URL = f"http://127.0.0.1:{args.port}"
    levels = [int(level) for level in args.levels.split(",")]
    report = run(args.seconds, levels, args.config, args.device, parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
