"""`embedding_space`: a short id naming the space a vector lives in.

Two vectors may be compared only when their `embedding_space` is equal. The id is a digest of
the model's recipe (clipfleet.models.fingerprint: weights digest, preprocessing, tokenizer,
runtime, precision; the `model_space`, fixed when a replica loads the model) and of how images
reach the model (the fetcher's shrink-before-shipping sizes and fit, and GPU JPEG decoding), so
it is the same on every replica and every restart of the same weights, and changes when the
weights, preprocessing, runtime or precision do. Library versions are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipfleet.config import FetchLimits
from clipfleet.models.quantize import calibration_limit

SPACE_PREFIX = "es-"
# Where int8 ranges are kept between loads, by model_space (weights digest included): the
# calibration forwards are most of a load's stamping time (ViT-L on a CPU: ~20 s). "off": none.
CALIBRATION_CACHE_ENV = "CLIPFLEET_CALIBRATION_CACHE"
# How images reach the encoders: part of the preprocessing the vectors depend on.
IMAGE_PIPELINE = frozenset({"ship_shortest_side", "ship_longest_side", "ship_long_side_fit"})
# How images are decoded on their way to the model. Bump it whenever a change moves the pixels
# an encoder sees (so stored vectors are re-embedded): 2 = decoded once at the model's input
# square (JPEG draft + one resize), inline images in the encoder (issue 22).
DECODE_PATH = 2


def space_id(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return SPACE_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(model: Any) -> dict[str, Any]:
    """The model's `model_space`, its recipe and its int8 range, computed once (at load) and
    kept with its details (`model.info.extra`, so describe / status / model cards show them)."""
    from clipfleet.models.fingerprint import model_recipe  # torch: encoders only, not the ingress

    extra = model.info.extra
    if "model_space" not in extra:
        recipe = model_recipe(model)
        extra["space_recipe"] = recipe
        extra["model_space"] = space_id(recipe)
        extra["int8_limit"] = cached_limit(extra["model_space"], lambda: calibration_limit(model))
    return space_of(model)


def _cache_dir() -> Path | None:
    configured = os.environ.get(CALIBRATION_CACHE_ENV, "")
    if configured.strip().lower() == "off":
        return None
    return Path(configured or Path.home() / ".cache" / "clipfleet" / "calibration")


def cached_limit(model_space: str, compute: Callable[[], float]) -> float:
    """The int8 range of `model_space`, from the cache, else `compute()`'s (then cached).
    A cache that cannot be read or written only costs the computation."""
    folder = _cache_dir()
    path = folder / f"{model_space}.json" if folder is not None else None
    if path is not None:
        try:
            return float(json.loads(path.read_text())["int8_limit"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    limit = compute()
    if path is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=folder, delete=False) as handle:
                json.dump({"int8_limit": limit}, handle)
            os.replace(handle.name, path)  # atomic: replicas on one node may race
        except OSError:
            pass
    return limit


def space_of(model: Any) -> dict[str, Any]:
    """What the ingress needs of a stamped model's space."""
    extra = model.info.extra
    return {
        "model_space": extra["model_space"],
        "int8_limit": extra["int8_limit"],
        "embed_dim": model.info.embed_dim,
    }


def embedding_space(model_space: str, fetch: FetchLimits, gpu_decode: bool | None = None) -> str:
    """The served id: the model's space and the image pipeline in front of it. `gpu_decode`
    overrides fetch.gpu_decode (batch jobs always decode on the CPU)."""
    pipeline = fetch.model_dump(include=set(IMAGE_PIPELINE))
    pipeline["gpu_decode"] = fetch.gpu_decode if gpu_decode is None else gpu_decode
    pipeline["decode_path"] = DECODE_PATH
    return space_id({"model": model_space, "images": pipeline})


@dataclass(frozen=True)
class VectorSpace:
    """One served variant's space, as the ingress reports it."""

    embedding_space: str
    model_space: str
    int8_limit: float
    dim: int

    @classmethod
    def of(cls, answer: dict[str, Any], fetch: FetchLimits) -> VectorSpace:
        model_space = answer["model_space"]
        return cls(
            embedding_space(model_space, fetch),
            model_space,
            float(answer["int8_limit"]),
            int(answer["embed_dim"]),
        )

    def card(self) -> dict[str, Any]:
        return {
            "embedding_space": self.embedding_space,
            "quantization": {
                "int8_limit": self.int8_limit,
                "int8": "clip(rint(x * 127 / L_d), -128, 127), L_d = int8_limit * sqrt(D / d)",
                "uint8": "int8 + 128",
                "binary": "packbits(x > 0) - 128 (8 dimensions per byte, MSB first)",
                "ubinary": "packbits(x > 0)",
            },
        }
