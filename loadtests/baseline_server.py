"""A seed-style server for the benchmark: one process, one model, one request at a time.

This is how the five replaced services work (seed 004's code path: FastAPI, open_clip's model,
preprocess and tokenizer in globals, `PIL.Image.open(...).convert("RGB")`, `encode_image` and
`encode_text` under `torch.no_grad()`, one inference at a time). The model is the same
architecture with the same random initialisation mode as clipfleet's fast profile; what differs
is what clipfleet adds: batching, draft-mode JPEG decoding, the text tower cut at the end-of-text
token, and the overlap of fetching/decoding with model work.

    python -m loadtests.baseline_server --port 8095
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os

import aiohttp
import open_clip
import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel


class Pair(BaseModel):
    image_url: str
    text: str


def create_app(model_name: str) -> FastAPI:
    torch.set_num_threads(int(os.environ.get("CLIPFLEET_TORCH_THREADS", os.cpu_count() or 1)))
    # random weights: no model hub here (the seeds load pretrained='openai' or similar)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
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
            image = preprocess(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
            with torch.no_grad():
                image_features = model.encode_image(image)
                text_features = model.encode_text(tokenizer([pair.text]))
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        cosine = float((image_features @ text_features.T).item())
        return {"cosine": cosine, "clip_score": max(100 * cosine, 0.0)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
