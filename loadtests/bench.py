"""clipfleet benchmark: naive pipeline, in-process ceiling, seed-style baseline, clipfleet.

    python -m loadtests.bench [--seconds 30] [--runs 3] [--out loadtests/results]   # make bench

Every part runs --runs times (one whole pass after another); the results file (JSON, plus a
PNG chart beside it) holds each row's median and spread (min-max) over the runs, every run's raw
figures, the commit, the machine, the versions and this command (loadtests/results.py).

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
import os
import sys
import time
from pathlib import Path

import psutil
import requests
import yaml

from clipfleet.config import (
    ClipModelSpec,
    EncoderConfig,
    FetchLimits,
    clip_deployment_name,
)
from clipfleet.images.decode import decode_image
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device, set_torch_threads
from loadtests import bench_rows, results
from loadtests.client import run_load
from loadtests.cputime import TreeCpu
from loadtests.images import make_library
from loadtests.naive import measure_naive
from loadtests.report import publish
from loadtests.servers import (
    default_profile,
    prepared,
    private_forward_lease,
    start,
    start_clipfleet,
    stop_tree,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE_PORT, BASELINE_PORT, PORT = 8091, 8095, 8000
CLIPFLEET_URL = f"http://127.0.0.1:{PORT}"
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


def image_url(n: int) -> str:
    return f"http://127.0.0.1:{IMAGE_PORT}/img/{n % 64}.{('jpg', 'png', 'webp')[n % 64 % 3]}"


def clipfleet_body(n: int) -> dict:
    return {"pairs": [{"image": {"url": image_url(n)}, "text": TEXTS[n % len(TEXTS)]}]}


def repeated_body(n: int) -> dict:
    """A scoring workload with repeats: 8 distinct images, so the embedding cache answers."""
    return clipfleet_body(n % 8)


def baseline_body(n: int) -> dict:
    return {"image_url": image_url(n), "text": TEXTS[n % len(TEXTS)]}


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


def measure(url: str, body, clients: int, seconds: float, server_pid: int | None = None) -> dict:
    """The load, machine CPU use, and the server's process-tree CPU seconds per request."""
    psutil.cpu_percent()
    server = TreeCpu(server_pid) if server_pid else None
    result = asyncio.run(
        run_load(
            url,
            body,
            clients,
            seconds,
            warmup_s=min(5, seconds / 3),
            on_start=server.start if server else None,
            on_end=server.stop if server else None,
        )
    )
    result["cpu_percent"] = psutil.cpu_percent()
    if server and result["requests"]:
        result["server_cpu_s_per_request"] = server.seconds / result["requests"]
    return result


def measure_config(config: Path, levels: list[int], seconds: float) -> list[dict]:
    """Start clipfleet with `config`, load /v1/score at each level, stop it."""
    profile = default_profile(config)
    serve = start_clipfleet(prepared(config, PORT, IMAGE_PORT), CLIPFLEET_URL)
    try:
        measured = []
        for clients in levels:
            before = batch_counts(profile)
            result = measure(
                f"{CLIPFLEET_URL}/v1/score", clipfleet_body, clients, seconds, serve.pid
            )
            after = batch_counts(profile)
            result["mean_batch_size"] = mean_batch(before["image"], after["image"])
            result["mean_text_batch_size"] = mean_batch(before["text"], after["text"])
            measured.append(result)
        return measured
    finally:
        stop_tree(serve)


def at_clients(measured: list[dict], clients: int) -> dict:
    return next((r for r in measured if r["clients"] == clients), measured[-1])


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
                    f"http://127.0.0.1:{BASELINE_PORT}/score", baseline_body, 32, seconds,
                    baseline.pid,
                )  # fmt: skip
            finally:
                stop_tree(baseline)
        systems = [("make-run", SERVE_CONFIG, [32]), ("bench", config, levels)]
        systems.append(("fast-int8", INT8_CONFIG, [32]))
        for name, system_config, system_levels in systems:
            if name in parts:
                report["systems"][name] = measure_config(system_config, system_levels, seconds)
        if "repeats" in parts:
            serve = start_clipfleet(prepared(config, PORT, IMAGE_PORT, cache=True), CLIPFLEET_URL)
            try:
                report["clipfleet_repeats_32"] = measure(
                    f"{CLIPFLEET_URL}/v1/score", repeated_body, 32, seconds, serve.pid
                )
            finally:
                stop_tree(serve)
    finally:
        stop_tree(images)
    report["clipfleet"] = report["systems"].get("bench", [])  # the key earlier runs used
    report["ratios"] = ratios(report)
    return report


def main() -> None:
    global IMAGE_PORT, BASELINE_PORT, PORT, CLIPFLEET_URL
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds per row")
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--runs", type=int, default=3, help="runs of every row (median, spread)")
    parser.add_argument(
        "--label", default="full", help="what the run is: full, or smoke (a harness check)"
    )
    parser.add_argument(
        "--out", type=Path, default=results.RESULTS_DIR,
        help="a folder (file named by kind, time and commit) or a .json path; a .png beside it",
    )  # fmt: skip
    parser.add_argument(
        "--config", type=Path, default=BENCH_CONFIG, help="the clipfleet Serve config to run"
    )
    parser.add_argument(
        "--device", default=None, help="the ceiling's device: cpu, cuda (default: CUDA if any)"
    )
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {PARTS}"
    )
    parser.add_argument("--port", type=int, default=PORT, help="clipfleet's HTTP port")
    parser.add_argument("--image-port", type=int, default=IMAGE_PORT)
    parser.add_argument("--baseline-port", type=int, default=BASELINE_PORT)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if unknown := parts - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    IMAGE_PORT, BASELINE_PORT, PORT = args.image_port, args.baseline_port, args.port
    CLIPFLEET_URL = f"http://127.0.0.1:{PORT}"
    levels = [int(level) for level in args.levels.split(",")]
    private_forward_lease()
    results.provenance()  # the commit as the runs start
    settings = {
        "seconds": args.seconds,
        "levels": levels,
        "parts": sorted(parts),
        "config": results.repo_path(args.config),
        "max_batch_size": configured_max_batch(args.config),
        "device": args.device,
    }
    reports = []
    for number in range(1, args.runs + 1):
        print(f"run {number} of {args.runs}", flush=True)
        started = time.monotonic()
        reports.append(run(args.seconds, levels, args.config, args.device, parts))
        reports[-1]["elapsed_s"] = time.monotonic() - started
        bench_rows.print_table(reports[-1])
        print(f"run {number} took {reports[-1]['elapsed_s'] / 60:.1f} min", flush=True)
    run_rows = [bench_rows.rows(report) for report in reports]
    run_ratios = [report["ratios"] for report in reports]
    doc = results.document(
        "bench", args.label, run_rows, run_ratios, bench_rows.TARGETS, settings, raw=reports
    )
    publish(doc, args.out)


if __name__ == "__main__":
    main()
