"""The naive in-process pipeline: what a user writes with stock open_clip calls, no server.

`PIL.Image.open(...).convert("RGB")` (full decode), open_clip's own preprocess, then
`encode_image` / `encode_text` at batch 32 under `torch.no_grad()`, in one process with torch's
default threads (every core). Same random-init architecture and images as clipfleet's runs.
"""

from __future__ import annotations

import io
import time

import open_clip
import torch
from PIL import Image

BATCH = 32


def measure_naive(
    images: list[bytes], texts: list[str], seconds: float, model_name: str = "ViT-B-32"
) -> dict:
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)

    def run_batch(start: int) -> None:
        chunk = [images[(start + i) % len(images)] for i in range(BATCH)]
        pixels = torch.stack(
            [preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data in chunk]
        )
        prompts = [texts[(start + i) % len(texts)] for i in range(BATCH)]
        with torch.no_grad():
            image_features = model.encode_image(pixels)
            text_features = model.encode_text(tokenizer(prompts))
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        (image_features * text_features).sum(dim=-1)

    run_batch(0)  # warm-up
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        run_batch(done)
        done += BATCH
    return {
        "pairs_per_s": done / (time.monotonic() - started),
        "batch_size": BATCH,
        "threads": torch.get_num_threads(),
    }
