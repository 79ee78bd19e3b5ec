"""Batch scoring benchmark: the same unique JPEG + caption pairs scored three ways, one run.

    python -m loadtests.bench_batch [--pairs 600] [--out results/bench_batch.json]
    # or: make bench-batch

1. naive: this process, stock open_clip calls (create_model_and_transforms, PIL open +
   preprocess, encode_image / encode_text in batches of 32), every core; model load included;
2. batch: `clipfleet batch score` in a fresh process (process start, imports, local Ray, the
   actor pool and the model load included), plus its rate from its first written part on;
3. score-csv: `clipfleet score-csv` against `serve run` of the same config (the service is
   started and warm before the clock starts; its start-up is reported separately).
All three use the fast profile's architecture (ViT-B-32) with random weights
(CLIPFLEET_RANDOM_WEIGHTS=1): the work is the same, the scores are meaningless. Loopback only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from clipfleet.config import AppArgs
from clipfleet.tools.processes import stop_tree
from loadtests.images import SIZES

ROOT = Path(__file__).resolve().parents[1]
BENCH_CONFIG = ROOT / "loadtests" / "bench_config.yaml"
NAIVE_BATCH = 32
SHARD_ROWS = 32
WORDS = ["cat", "dog", "car", "tree", "beach", "city", "bowl", "bird", "river", "house"]


def make_pairs(folder: Path, count: int) -> Path:
    """`count` distinct smooth-random JPEGs (photo-like sizes) and captions; returns the CSV."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        rng = np.random.default_rng(10_000 + index)
        coarse = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        name = f"images/{index:05d}.jpg"
        (folder / name).write_bytes(buffer.getvalue())
        caption = f"a photo of a {WORDS[index % 10]} near a {WORDS[(index // 10) % 10]}"
        rows.append({"image": name, "caption": caption})
    path = folder / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_pairs(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def run_naive(pairs_csv: Path, model_name: str) -> dict:
    """What a user writes without clipfleet: stock open_clip, one process, batch 32."""
    import open_clip
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    loaded = time.perf_counter()
    pairs = read_pairs(pairs_csv)
    scores = []
    for start in range(0, len(pairs), NAIVE_BATCH):
        chunk = pairs[start : start + NAIVE_BATCH]
        pixels = torch.stack(
            [preprocess(Image.open(pairs_csv.parent / p["image"]).convert("RGB")) for p in chunk]
        )
        with torch.no_grad():
            images = model.encode_image(pixels)
            texts = model.encode_text(tokenizer([p["caption"] for p in chunk]))
        images = images / images.norm(dim=-1, keepdim=True)
        texts = texts / texts.norm(dim=-1, keepdim=True)
        scores += (100 * (images * texts).sum(-1)).clamp(min=0).tolist()
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "load_seconds": loaded - started,
        "pairs_per_s": len(pairs) / (finished - started),
        "steady_pairs_per_s": len(pairs) / (finished - loaded),
    }


def first_part_watcher(output: Path, found: dict) -> threading.Thread:
    def watch() -> None:
        while "stop" not in found:
            if "first" not in found and any(output.glob("part-*.parquet")):
                found["first"] = time.perf_counter()
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def run_batch(pairs_csv: Path, config: Path, output: Path, batch_size: int | None) -> dict:
    command = [
        sys.executable, "-m", "clipfleet.tools.cli", "batch", "score", "--config", str(config),
        "--input", str(pairs_csv), "--output", str(output), "--shard-rows", str(SHARD_ROWS),
    ]  # fmt: skip
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    env = {**os.environ, "CLIPFLEET_RANDOM_WEIGHTS": "1", "RAY_worker_niceness": "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    found: dict = {}
    watcher = first_part_watcher(output, found)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    finished = time.perf_counter()
    found["stop"] = True
    watcher.join()
    if result.returncode not in (0, 1):
        raise RuntimeError(f"clipfleet batch failed:\n{result.stderr[-3000:]}")
    rows = len(read_pairs(pairs_csv))
    first = found.get("first", finished)
    after_first = rows - SHARD_ROWS
    return {
        "seconds": finished - started,
        "pairs_per_s": rows / (finished - started),
        "first_part_s": first - started,
        "after_first_pairs_per_s": after_first / (finished - first) if finished > first else 0,
        "summary": result.stdout.strip().splitlines()[-1],
    }


def service_config(config: Path, port: int) -> Path:
    document = yaml.safe_load(config.read_text())
    document.setdefault("http_options", {})["port"] = port
    path = Path(tempfile.mkdtemp(prefix="clipfleet-bench-batch-")) / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_score_csv(pairs_csv: Path, config: Path, port: int) -> dict:
    from loadtests.servers import start

    serve = Path(sys.executable).parent / "serve"
    env = {"CLIPFLEET_RANDOM_WEIGHTS": "1", "RAY_worker_niceness": "0"}
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    service = start(
        [str(serve), "run", str(service_config(config, port))], f"{url}/readyz", 600, env
    )
    ready = time.perf_counter()
    try:
        command = [
            sys.executable, "-m", "clipfleet.tools.cli", "score-csv", str(pairs_csv), "--url", url,
            "--output", str(pairs_csv.with_name("score_csv_out.csv")),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        finished = time.perf_counter()
    finally:
        stop_tree(service)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"score-csv failed:\n{result.stderr[-3000:]}")
    rows = len(read_pairs(pairs_csv))
    return {
        "seconds": finished - ready,
        "service_start_s": ready - started,
        "pairs_per_s": rows / (finished - ready),
    }


def print_table(report: dict) -> None:
    naive = report["naive"]["pairs_per_s"]
    print(f"\n{report['pairs']} pairs, {report['model']} (random weights), {report['cpus']} CPUs")
    print(f"{'way':<34}{'seconds':>9}{'pairs/s':>9}{'x naive':>9}")
    rows = [
        ("naive open_clip (load included)", report["naive"]["seconds"], naive),
        ("clipfleet batch (start-up incl.)", report["batch"]["seconds"],
         report["batch"]["pairs_per_s"]),
        ("clipfleet batch from 1st part", None, report["batch"]["after_first_pairs_per_s"]),
        ("naive open_clip after load", None, report["naive"]["steady_pairs_per_s"]),
    ]  # fmt: skip
    if "score_csv" in report:
        csv_run = report["score_csv"]
        rows.append(("score-csv via service (warm)", csv_run["seconds"], csv_run["pairs_per_s"]))
    for name, seconds, rate in rows:
        shown = f"{seconds:9.1f}" if seconds is not None else f"{'':>9}"
        print(f"{name:<34}{shown}{rate:9.1f}{rate / naive:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--config", type=Path, default=BENCH_CONFIG)
    parser.add_argument("--batch-size", type=int, default=None, help="batch job's forward size")
    parser.add_argument("--skip-service", action="store_true", help="no score-csv run")
    parser.add_argument("--port", type=int, default=8097, help="the service's port (not 8000)")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    os.environ["CLIPFLEET_RANDOM_WEIGHTS"] = "1"
    args = AppArgs(**yaml.safe_load(options.config.read_text())["applications"][0]["args"])
    model = args.profiles[args.default_profile].clip.model
    work = Path(tempfile.mkdtemp(prefix="clipfleet-bench-batch-"))
    pairs_csv = make_pairs(work, options.pairs)
    report = {"pairs": options.pairs, "model": model, "cpus": os.cpu_count()}
    report["naive"] = run_naive(pairs_csv, model)
    report["batch"] = run_batch(pairs_csv, options.config, work / "out", options.batch_size)
    if not options.skip_service:
        report["score_csv"] = run_score_csv(pairs_csv, options.config, options.port)
    print_table(report)
    print(report["batch"]["summary"])
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
