"""A seed-style server for the benchmark: one process, one model, one request at a time.

This is how the five replaced services work (Flask/FastAPI, the model in a global, a lock or a
single worker around inference). It uses clipfleet's own model and decoding code, so the
comparison isolates serving, not model code.

    python -m loadtests.baseline_server --port 8095
"""

from __future__ import annotations

import argparse
import asyncio
import os

import aiohttp
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from clipfleet.config import ClipModelSpec, FetchLimits
from clipfleet.imaging import decode_image
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device, set_torch_threads
from clipfleet.scoring import clip_scores


class Pair(BaseModel):
    image_url: str
    text: str


def create_app(model_name: str, pretrained: str | None) -> FastAPI:
    set_torch_threads(int(os.environ.get("CLIPFLEET_TORCH_THREADS", os.cpu_count() or 1)))
    spec = ClipModelSpec(model=model_name, pretrained=pretrained)
    model = load_clip_model(spec, choose_device("cpu"), random_weights=True)
    limits = FetchLimits()
    lock = asyncio.Lock()
    app = FastAPI()
    state: dict = {}

    @app.post("/score")
    async def score(pair: Pair) -> dict:
        if "session" not in state:
            state["session"] = aiohttp.ClientSession()
        async with state["session"].get(pair.image_url) as response:
            data = await response.read()
        async with lock:  # one inference at a time, like the seeds
            pixels = decode_image(data, limits)
            image = model.embed_images([pixels])
            text = model.encode_texts([pair.text])
        return clip_scores(image, text)[0]

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="laion2b_s34b_b79k")
    args = parser.parse_args()
    app = create_app(args.model, args.pretrained)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
