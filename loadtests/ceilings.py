"""In-process ceilings of a Hugging Face CLIP directory's image tower: what one process on this
machine can do with no server around it. Runs in either venv, so it imports nothing of
clipfleet's unless asked for clipfleet's stack.

    <venv>/bin/python -m loadtests.ceilings --stack hf --model-dir DIR --images-dir DIR
    .venv/bin/python  -m loadtests.ceilings --stack clipfleet --model-dir DIR --images-dir DIR

Two figures, img/s at `--batch` (default 32), after a warm-up batch:
- `forward`: the image forward alone, on a batch preprocessed once;
- `pipeline`: decode + preprocess + forward of unique JPEGs.
Stacks: `hf` is what infinity-emb does with a CLIP (PIL `Image.open` of the bytes, the
directory's `AutoProcessor` on the list of images, `get_image_features` under inference mode;
torch's default threads), measured in infinity's venv with its transformers; `clipfleet` is
clipfleet's own model code (`clipfleet.images.decode.decode_image`: draft JPEG decode and the
shipped resize, `preprocess_image`, `encode_images`, threads sized by clipfleet) in .venv.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch


class HfStack:
    def __init__(self, model_dir: str) -> None:
        from transformers import AutoModel, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()

    def preprocess(self, jpegs: list[bytes]) -> torch.Tensor:
        from PIL import Image

        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> None:
        with torch.inference_mode():
            self.model.get_image_features(pixel_values=pixels)


class ClipfleetStack:
    def __init__(self, model_dir: str) -> None:
        from clipfleet.config import ClipModelSpec, FetchLimits
        from clipfleet.models.clip import load_clip_model
        from clipfleet.models.device import choose_device, set_torch_threads
        from clipfleet.models.sizing import node_cores

        set_torch_threads(node_cores())
        spec = ClipModelSpec(backend="transformers", model=model_dir)
        self.model = load_clip_model(spec, choose_device("cpu"), random_weights=False)
        self.limits = FetchLimits()

    def preprocess(self, jpegs: list[bytes]) -> list:
        from clipfleet.images.decode import decode_image

        return [self.model.preprocess_image(decode_image(data, self.limits)) for data in jpegs]

    def forward(self, pixels: list) -> None:
        self.model.encode_images(pixels)


STACKS = {"hf": HfStack, "clipfleet": ClipfleetStack}


def rate(step, batch: int, seconds: float) -> float:
    """img/s of `step(index)` (one batch each) over at least `seconds` and two batches."""
    done, started = 0, time.perf_counter()
    while done < 2 * batch or time.perf_counter() - started < seconds:
        step(done // batch)
        done += batch
    return done / (time.perf_counter() - started)


def measure(stack, jpegs: list[bytes], batch: int, seconds: float, kinds: list[str]) -> dict:
    def chunk(index: int) -> list[bytes]:
        start = index * batch
        return [jpegs[(start + i) % len(jpegs)] for i in range(batch)]

    fixed = stack.preprocess(chunk(0))
    stack.forward(fixed)  # warm-up: first-call allocations, thread pools
    found = {}
    if "forward" in kinds:
        found["forward_img_per_s"] = rate(lambda _: stack.forward(fixed), batch, seconds)
    if "pipeline" in kinds:
        found["pipeline_img_per_s"] = rate(
            lambda index: stack.forward(stack.preprocess(chunk(index + 1))), batch, seconds
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", choices=sorted(STACKS), required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--images-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=512, help="distinct images to cycle over")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--kinds", default="forward,pipeline")
    args = parser.parse_args()
    paths = sorted(args.images_dir.glob("*.jpg"))[: args.count]
    jpegs = [path.read_bytes() for path in paths]
    if not jpegs:
        parser.error(f"no JPEGs in {args.images_dir}")
    import transformers

    stack = STACKS[args.stack](args.model_dir)
    result = measure(stack, jpegs, args.batch, args.seconds, args.kinds.split(","))
    result.update(
        stack=args.stack,
        batch=args.batch,
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
