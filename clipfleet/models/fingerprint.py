"""What makes a loaded model's vectors what they are, in a form that is the same on every
replica and every restart: a digest of its weights, its preprocessing, its tokenizer, its runtime
and precision (clipfleet.models.embedding_space turns this into the `embedding_space` id).

Random-weights mode seeds the initialisation from the model spec (`seeded_init`), so replicas of
one variant, and restarts, build the very same weights, as real weights are the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import torch

from clipfleet.models.calibration import CALIBRATION_PROMPTS

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # function reprs carry their memory address


def weights_digest(module: torch.nn.Module) -> str:
    """blake2b over every tensor of the state dict (names, shapes, dtypes, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def init_seed(identity: dict[str, Any]) -> int:
    """A 63-bit seed from what names a model's weights (not its runtime or precision)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@contextlib.contextmanager
def seeded_init(identity: dict[str, Any], random_weights: bool) -> Iterator[None]:
    """Random-weights mode: build under a seed derived from `identity`, so every replica and
    every restart of one spec gets the same weights; the caller's RNG state is restored after.
    Models are initialised on the CPU (open_clip, transformers and torchvision build there and
    move to the device afterwards), so the CPU generator is the one that matters."""
    if not random_weights:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(identity))
        yield


def describe_transform(transform: Any) -> str:
    """A transform's description without process-specific details (memory addresses)."""
    return _ADDRESS.sub("", repr(transform))


def short_digest(value: Any) -> str:
    return hashlib.blake2b(json.dumps(value).encode(), digest_size=8).hexdigest()


def compute_precision(info_extra: dict[str, Any], fp16: bool) -> str:
    """What the image forward computes in: ONNX Runtime records its own (fp32, fp16, int8);
    torch runs fp16 autocast on CUDA, and fp32 on the CPU unless bf16 was asked for."""
    if info_extra.get("runtime") == "onnx" or info_extra.get("precision") == "bf16":
        return str(info_extra.get("precision", "fp32"))
    return "fp16" if fp16 else "fp32"


def model_recipe(model: Any) -> dict[str, str]:
    """Everything the vectors depend on, each part stable across processes and machines."""
    recipe = {
        "family": model.info.family,
        "weights": weights_digest(model.weights_module()),
        "preprocessing": short_digest(model.preprocessing_description()),
        "runtime": str(model.info.extra.get("runtime", "torch")),
        "precision": compute_precision(model.info.extra, model.plan.fp16),
    }
    if model.info.family == "clip":
        # the tokenizer, as what it does: the calibration prompts' token ids
        recipe["tokenizer"] = short_digest(model.token_ids(list(CALIBRATION_PROMPTS)))
    return recipe
