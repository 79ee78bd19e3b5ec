"""CLIP through Hugging Face transformers: any CLIP hub id or local directory."""

from __future__ import annotations

import json
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizerFast,
)

from clipfleet.config import ClipModelSpec
from clipfleet.models.base import (
    ClipModel,
    ModelInfo,
    ModelLoadError,
    report_random_weights,
    to_pil,
)
from clipfleet.models.device import DevicePlan

_BASE_PATCH32: dict = {}
_LARGE_PATCH14 = {
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
    },
}
# Architectures of well-known hub ids, so random-weights mode can build them offline.
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "openai/clip-vit-base-patch32": _BASE_PATCH32,
    "openai/clip-vit-base-patch16": {"vision_config": {"patch_size": 16}},
    "openai/clip-vit-large-patch14": _LARGE_PATCH14,
    "patrickjohncyh/fashion-clip": _BASE_PATCH32,
}


@cache
def openai_clip_tokenizer() -> CLIPTokenizerFast:
    """OpenAI CLIP's BPE tokenizer built from the vocabulary open_clip ships (no download)."""
    simple = open_clip.SimpleTokenizer()
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    folder = Path(tempfile.mkdtemp(prefix="clipfleet-tokenizer-"))
    (folder / "vocab.json").write_text(json.dumps(simple.encoder), encoding="utf-8")
    merge_lines = "\n".join(" ".join(pair) for pair in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merge_lines + "\n", encoding="utf-8")
    return CLIPTokenizerFast(
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        model_max_length=77,
    )


def random_clip_config(spec: ClipModelSpec) -> CLIPConfig:
    source = spec.architecture or spec.model
    if Path(source).is_dir():
        return CLIPConfig.from_pretrained(source)
    if source in KNOWN_ARCHITECTURES:
        return CLIPConfig(**KNOWN_ARCHITECTURES[source])
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise ModelLoadError(
            f"random-weights mode can't read the architecture of {source!r} offline; set "
            f"`architecture` to a local model directory or one of {sorted(KNOWN_ARCHITECTURES)}"
        ) from exc


def _local_or_none(path: str, loader):
    try:
        return loader(path, local_files_only=True)
    except (OSError, ValueError):
        return None


class TransformersClipModel(ClipModel):
    def __init__(self, spec: ClipModelSpec, plan: DevicePlan, random_weights: bool) -> None:
        started = time.perf_counter()
        self.plan = plan
        try:
            if random_weights:
                config = random_clip_config(spec)
                model = CLIPModel(config)
                source = spec.architecture or spec.model
                self._tokenizer = _local_or_none(source, AutoTokenizer.from_pretrained)
                self._tokenizer = self._tokenizer or openai_clip_tokenizer()
                size = config.vision_config.image_size
                self._processor = _local_or_none(source, AutoImageProcessor.from_pretrained)
                self._processor = self._processor or CLIPImageProcessor(
                    size={"shortest_edge": size}, crop_size={"height": size, "width": size}
                )
                weights = "random"
            else:
                model = CLIPModel.from_pretrained(spec.model)
                self._tokenizer = AutoTokenizer.from_pretrained(spec.model)
                self._processor = AutoImageProcessor.from_pretrained(spec.model)
                is_dir = Path(spec.model).expanduser().is_dir()
                weights = f"dir:{spec.model}" if is_dir else f"hub:{spec.model}"
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not load transformers CLIP {spec.model!r}: {exc}. Pre-fetch with "
                "`make weights` on a machine with internet, point `model` at a local directory "
                "(save_pretrained), or set CLIPFLEET_RANDOM_WEIGHTS=1 (random weights, tests only)."
            ) from exc
        if random_weights:
            report_random_weights(f"transformers CLIP {spec.model}")
        self._model = model.eval().to(plan.device)
        self._context_length = int(model.config.text_config.max_position_embeddings)
        self.logit_scale = float(model.logit_scale.exp().item())
        self.info = ModelInfo(
            family="clip",
            backend="transformers",
            model=spec.model,
            weights=weights,
            embed_dim=int(model.config.projection_dim),
            device=plan.name,
            load_seconds=time.perf_counter() - started,
            extra={"logit_scale": round(self.logit_scale, 4)},
        )

    def preprocess_image(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        return self._processor(images=to_pil(image), return_tensors="pt")["pixel_values"][0]

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _projected(self._model.get_image_features(pixel_values=pixels))

    def _tokenize(self, texts: list[str]):
        # Always the same padding/truncation arguments: a fast tokenizer whose settings change
        # while another thread uses it fails ("Already borrowed").
        return self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self._context_length,
            return_tensors="pt",
        )

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._tokenize(texts)["attention_mask"].sum(dim=1).tolist()

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self._tokenize(texts).to(self.plan.device)
        return _projected(self._model.get_text_features(**tokens))


def _projected(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
