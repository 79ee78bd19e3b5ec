"""GPU check: what one GPU does with CLIP, measured with nothing of clipfleet's around it.

    python -m loadtests.gpu_check --out gpu_check.json            # on a GPU node, < 10 min
    python -m loadtests.gpu_check --tiny --out /tmp/tiny.json     # CPU, tiny models, seconds

Needs torch, torchvision, numpy, Pillow and open_clip (open_clip_torch + ftfy + wcwidth, carried
as wheels where the node's image lacks them: docs/performance.md); no Ray, no clipfleet (it
imports only loadtests.photos, numpy + Pillow). Random weights: the compute is the real
architectures', which is all a throughput figure needs. Measures, writing one JSON file:
1. model-only img/s of each CLIP image tower (ViT-B-32, ViT-L-14; fp16 on CUDA, fp32 on CPU)
   at each batch size, on a device-resident batch, and the peak GPU memory of each;
2. JPEG decode img/s with torchvision.io.decode_jpeg on the device (nvJPEG on CUDA), one image
   per call and a batch per call (a list), at 640x480, ~144 KiB 1024x768 photos and 1920x1080;
3. decode + preprocess + forward img/s: JPEG bytes in, embeddings out, all on the device
   (decode_jpeg, resize the short side to the model's size, centre crop, normalise, forward).
Compare with the published figures in REFERENCES (model-only on an RTX 4090; end-to-end
clip-retrieval on an A100).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
REFERENCES = {
    "ViT-B-32 model-only fp16, RTX 4090 (published)": "~12,000 img/s",
    "ViT-L-14 model-only fp16, RTX 4090 (published)": "~800 img/s",
    "clip-retrieval end to end, one A100 (published)": "~2,500 samples/s",
}
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
FULL = {
    "models": ["ViT-B-32", "ViT-L-14"],
    "batches": [1, 16, 64, 128, 256, 512],
    "decode_sizes": [(640, 480), (1024, 768), (1920, 1080)],
    "decode_batch": 64,
    "pipeline_batches": [64, 256],
    "seconds": 3.0,
    "images": 64,
}
TINY = {
    "models": ["tiny"],
    "batches": [1, 4],
    "decode_sizes": [(64, 48)],
    "decode_batch": 4,
    "pipeline_batches": [4],
    "seconds": 0.2,
    "images": 4,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(step, items_per_step: int, seconds: float, device: torch.device) -> float:
    """Items/s of `step()`, after two warm-up steps, over at least `seconds` and three steps."""
    for _ in range(2):
        step()
    sync(device)
    steps, started = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - started < seconds:
        step()
        steps += 1
        if steps % 8 == 0:
            sync(device)  # keep the queue of launched work short
    sync(device)
    return steps * items_per_step / (time.perf_counter() - started)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    import open_clip

    config = TINY_CFG if name == "tiny" else open_clip.get_model_config(name)
    model = open_clip.CLIP(**config).eval()
    return model.to(device=device, dtype=dtype), int(config["vision_cfg"]["image_size"])


def model_only(name, model, size, device, dtype, batches, seconds) -> list[dict]:
    found = []
    with torch.inference_mode():
        for batch in batches:
            reset_peak(device)
            pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            try:
                rate = timed_rate(lambda p=pixels: model.encode_image(p), batch, seconds, device)
            except torch.OutOfMemoryError:
                found.append({"model": name, "batch": batch, "error": "out of memory"})
                break
            found.append(
                {"model": name, "batch": batch, "img_per_s": rate, "peak_mib": peak_mib(device)}
            )
            print(f"model-only {name} batch {batch}: {rate:.0f} img/s", flush=True)
    return found


def make_jpegs(size: tuple[int, int], count: int) -> list[torch.Tensor]:
    from loadtests.photos import make_photo

    return [
        torch.frombuffer(bytearray(make_photo(index, size)), dtype=torch.uint8)
        for index in range(count)
    ]


def decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)


def decode_rates(sizes, batch, count, seconds, device) -> list[dict]:
    from torchvision.io import ImageReadMode, decode_jpeg

    found = []
    for width, height in sizes:
        jpegs = make_jpegs((width, height), count)
        mean_kib = sum(j.numel() for j in jpegs) / len(jpegs) / 1024
        chunk = (jpegs * (batch // len(jpegs) + 1))[:batch]

        def one_at_a_time(images=jpegs):
            for image in images:
                decode_jpeg(image, mode=ImageReadMode.RGB, device=device)

        for mode, step, per_step in (
            ("one per call", one_at_a_time, len(jpegs)),
            (f"list of {batch} per call", lambda c=chunk: decode(c, device), batch),
        ):
            rate = timed_rate(step, per_step, seconds, device)
            found.append(
                {"size": f"{width}x{height}", "mean_kib": mean_kib, "mode": mode, "img_per_s": rate}
            )
            print(f"decode {width}x{height} ({mode}): {rate:.0f} img/s", flush=True)
    return found


def preprocess(images: list[torch.Tensor], size: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 CHW images -> the model's normalised input, on the images' device: to float, short
    side to `size` (bicubic, antialiased), centre crop, mean/std."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    bicubic = InterpolationMode.BICUBIC
    resized = [
        F.center_crop(F.resize(image.float().div_(255), [size], bicubic, antialias=True), size)
        for image in images
    ]
    batch = F.normalize(torch.stack(resized), list(OPENAI_MEAN), list(OPENAI_STD))
    return batch.to(dtype)


def pipeline_rates(name, model, size, device, dtype, batches, jpegs, seconds) -> list[dict]:
    found = []
    with torch.inference_mode():
        for batch in batches:
            reset_peak(device)
            chunk = (jpegs * (batch // len(jpegs) + 1))[:batch]

            def step(c=chunk):
                model.encode_image(preprocess(decode(c, device), size, dtype))

            rate = timed_rate(step, batch, seconds, device)
            found.append(
                {"model": name, "batch": batch, "img_per_s": rate, "peak_mib": peak_mib(device)}
            )
            print(f"decode+preprocess+forward {name} batch {batch}: {rate:.0f} img/s", flush=True)
    return found


def environment(device: torch.device) -> dict:
    import torchvision

    try:
        import open_clip

        open_clip_version = open_clip.__version__
    except (ImportError, AttributeError):
        open_clip_version = None
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip_version,
        "device": str(device),
        "cpu_count": __import__("os").cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {**found, "commit": commit}


def run(tiny: bool, device_name: str | None, models: list[str] | None = None, seconds=None) -> dict:
    plan = dict(TINY if tiny else FULL)
    if models:
        plan["models"] = models
    if seconds:
        plan["seconds"] = seconds
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    report: dict = {
        "schema": "clipfleet-gpu-check/1",
        "mode": "tiny" if tiny else "full",
        "command": " ".join(["python -m loadtests.gpu_check", *sys.argv[1:]]),
        "environment": environment(device),
        "dtype": str(dtype).removeprefix("torch."),
        "references": REFERENCES,
        "model_only": [],
        "pipeline": [],
    }
    seconds, count = plan["seconds"], plan["images"]
    report["decode"] = decode_rates(
        plan["decode_sizes"], plan["decode_batch"], count, seconds, device
    )
    photos = make_jpegs(plan["decode_sizes"][len(plan["decode_sizes"]) // 2], count)
    for name in plan["models"]:
        model, size = build_model(name, device, dtype)
        shape = (name, model, size, device, dtype)
        report["model_only"] += model_only(*shape, plan["batches"], seconds)
        report["pipeline"] += pipeline_rates(*shape, plan["pipeline_batches"], photos, seconds)
        del model
        reset_peak(device)
    rows = report["model_only"] + report["pipeline"]
    report["peak_mib"] = max((row.get("peak_mib") or 0 for row in rows), default=0)
    report["elapsed_s"] = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny models, a few images (CI)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if any)")
    parser.add_argument("--models", default=None, help="comma-separated open_clip names")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per figure")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else None
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors: a thread pool only adds its barriers
    try:
        report = run(args.tiny, args.device, models, args.seconds)
    finally:
        torch.set_num_threads(threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({report['elapsed_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
