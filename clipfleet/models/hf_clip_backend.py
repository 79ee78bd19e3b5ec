"""CLIP-like models through Hugging Face transformers: CLIP, SigLIP and SigLIP 2 hub ids or local
directories, the model class chosen from the checkpoint's config (`model_type`)."""

from __future__ import annotations

import json
import logging
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
    CLIPTokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from clipfleet.config import ClipModelSpec
from clipfleet.models.base import (
    ClipModel,
    ModelLoadError,
    TextTokens,
    report_random_weights,
    to_pil,
)
from clipfleet.models.device import DevicePlan
from clipfleet.models.geometry import InputGeometry, hf_processor_geometry
from clipfleet.models.square_input import hf_square_input
from clipfleet.models.text_bounds import usable_texts

logger = logging.getLogger("clipfleet.models")

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
OPENAI_SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
# Architectures of well-known hub ids, so random-weights mode can build them offline.
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "openai/clip-vit-base-patch32": _BASE_PATCH32,
    "openai/clip-vit-base-patch16": {"vision_config": {"patch_size": 16}},
    "openai/clip-vit-large-patch14": _LARGE_PATCH14,
    "patrickjohncyh/fashion-clip": _BASE_PATCH32,
}
# SigLIP hub ids whose architecture random-weights mode can build offline (config defaults).
KNOWN_SIGLIP_ARCHITECTURES: dict[str, dict] = {
    "google/siglip-base-patch16-224": {},
}


def openai_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's vocabulary (token -> id) and merges (pairs, by rank) from the BPE open_clip
    ships; open_clip names the two special tokens `<start_of_text>` / `<end_of_text>`, OpenAI's
    files (and transformers' CLIPTokenizer) `<|startoftext|>` / `<|endoftext|>`."""
    simple = open_clip.SimpleTokenizer()
    vocab = {OPENAI_SPECIAL.get(token, token): index for token, index in simple.encoder.items()}
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    return vocab, merges


@cache
def openai_clip_tokenizer() -> CLIPTokenizer:
    """OpenAI CLIP's BPE tokenizer built from the vocabulary open_clip ships (no download). From
    the vocabulary itself: transformers 5 ignores `vocab_file`/`merges_file` paths (a tokenizer
    built from them knew two tokens and mapped every word to one id)."""
    vocab, merges = openai_bpe()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def random_clip_config(spec: ClipModelSpec) -> CLIPConfig:
    source = spec.architecture or spec.model
    if Path(source).is_dir():
        return AutoConfig.from_pretrained(source)
    if source in KNOWN_ARCHITECTURES:
        return CLIPConfig(**KNOWN_ARCHITECTURES[source])
    if source in KNOWN_SIGLIP_ARCHITECTURES:
        return SiglipConfig(**KNOWN_SIGLIP_ARCHITECTURES[source])
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise ModelLoadError(
            f"random-weights mode can't read the architecture of {source!r} offline; set "
            "`architecture` to a local model directory or one of "
            f"{sorted(KNOWN_ARCHITECTURES) + sorted(KNOWN_SIGLIP_ARCHITECTURES)}"
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
                model = model_class_for(config)(config)
                source = spec.architecture or spec.model
                self._tokenizer, tokenizer_note = random_mode_tokenizer(spec, config)
                self._processor = _local_or_none(source, AutoImageProcessor.from_pretrained)
                self._processor = self._processor or default_image_processor(config)
                weights = "random"
            else:
                config = AutoConfig.from_pretrained(spec.model)
                model = model_class_for(config).from_pretrained(spec.model)
                tokenizer_source = spec.tokenizer or spec.model
                self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
                tokenizer_note = f"transformers:{tokenizer_source}"
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
            report_random_weights(f"transformers {config.model_type} {spec.model}")
        self._model = model.eval().to(plan.device)
        self._square_input = hf_square_input(self._processor)
        self._model_type = config.model_type
        self._context_length = int(config.text_config.max_position_embeddings)
        self._finish_loading(
            model,
            "transformers",
            spec,
            weights,
            started,
            model_type=self._model_type,
            tokenizer=tokenizer_note,
        )

    def preprocess_image(self, image: np.ndarray | Image.Image) -> torch.Tensor | dict:
        if self._square_input is not None and (square := self._square_input(image)) is not None:
            return square  # already at the model's square: the processor's result, directly
        inputs = self._processor(images=to_pil(image), return_tensors="pt")
        if "pixel_attention_mask" in inputs:  # SigLIP 2 (NaFlex): patches, mask and shapes
            return {key: value[0] for key, value in inputs.items()}
        return inputs["pixel_values"][0]

    def input_geometry(self) -> InputGeometry | None:
        return hf_processor_geometry(self._processor)

    def encode_images(self, pixel_batch: list) -> np.ndarray:
        if not isinstance(pixel_batch[0], dict):
            return super().encode_images(pixel_batch)
        stacked = {
            key: torch.stack([item[key] for item in pixel_batch]).to(self.plan.device)
            for key in pixel_batch[0]
        }
        return self._run(self._image_features, stacked)

    def image_tower(self) -> torch.nn.Module:
        if self._model_type == "siglip2":
            raise ModelLoadError(
                "runtime onnx takes one pixel tensor; SigLIP 2 (NaFlex) images are patches, a "
                "mask and shapes: run it with runtime torch"
            )
        return HfImageTower(self._model)

    def _image_features(self, pixels: torch.Tensor | dict) -> torch.Tensor:
        if isinstance(pixels, dict):
            return _projected(self._model.get_image_features(**pixels))
        return _projected(self._model.get_image_features(pixel_values=pixels))

    def _tokenize(self, texts: list[str]) -> list[TextTokens]:
        # Always the same padding/truncation arguments: a fast tokenizer whose settings change
        # while another thread uses it fails ("Already borrowed"). CLIP texts are padded per
        # batch (to its longest) when they are stacked; SigLIP pools the last position and was
        # trained on texts padded to the full length.
        encoded = self._tokenizer(
            usable_texts(texts, self._context_length),
            padding=False if self._model_type == "clip" else "max_length",
            truncation=True,
            max_length=self._context_length,
            return_attention_mask=True,  # the count; only CLIP's text tower is given it
        )
        pairs = zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
        return [TextTokens((ids, mask), sum(mask)) for ids, mask in pairs]

    def _token_features(self, tokens: list[TextTokens]) -> torch.Tensor:
        return _projected(self._model.get_text_features(**self._stacked(tokens)))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self._stacked(self.tokenize(texts))["input_ids"].tolist()

    def preprocessing_description(self) -> str:
        return json.dumps(self._processor.to_dict(), sort_keys=True, default=str)

    def _stacked(self, tokens: list[TextTokens]) -> dict[str, torch.Tensor]:
        """The batch as the tokenizer's own padding="longest" gives it: input_ids right-padded
        with its pad id, and the attention mask where the tokenizer hands its model one."""
        pairs = [item.ids for item in tokens]
        length = max(len(ids) for ids, _ in pairs)
        pad_id = getattr(self._tokenizer, "pad_token_id", None) or 0
        ids = [[*ids, *[pad_id] * (length - len(ids))] for ids, _ in pairs]
        batch = {"input_ids": torch.tensor(ids, dtype=torch.long, device=self.plan.device)}
        if "attention_mask" in getattr(self._tokenizer, "model_input_names", ()):
            masks = [[*mask, *[0] * (length - len(mask))] for _, mask in pairs]
            batch["attention_mask"] = torch.tensor(masks, dtype=torch.long, device=self.plan.device)
        return batch


class HfImageTower(torch.nn.Module):
    """The image half of a transformers CLIP or SigLIP as one module, pixels -> features, what
    `get_image_features` computes (the vision tower's pooled output, then CLIP's projection);
    only these weights, so runtime=onnx's cache key names the image tower's own."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = getattr(model, "visual_projection", None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return pooled if self.visual_projection is None else self.visual_projection(pooled)


def model_class_for(config) -> type:
    """CLIPModel, SiglipModel or Siglip2Model, from the checkpoint config's `model_type`."""
    from transformers import Siglip2Model

    classes = {"clip": CLIPModel, "siglip": SiglipModel, "siglip2": Siglip2Model}
    if config.model_type not in classes:
        raise ModelLoadError(
            f"model_type {config.model_type!r} is not a supported image-text model; "
            f"use one of {sorted(classes)}"
        )
    return classes[config.model_type]


def default_image_processor(config):
    """The family's standard preprocessing at the config's image size (random-weights mode)."""
    vision = config.vision_config
    if config.model_type == "siglip2":
        from transformers import Siglip2ImageProcessor

        return Siglip2ImageProcessor(
            max_num_patches=vision.num_patches, patch_size=vision.patch_size
        )
    size = vision.image_size
    if config.model_type == "siglip":
        return SiglipImageProcessor(size={"height": size, "width": size})
    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


class FoldedTokenizer:
    """Random-weights stand-in when a model's own tokenizer can't be read offline: OpenAI CLIP's
    BPE (shipped with open_clip) with ids folded into the model's vocabulary. Deterministic and
    shape-correct, nothing more: it never stands in for real weights."""

    def __init__(self, vocab_size: int) -> None:
        self._base = openai_clip_tokenizer()
        self._vocab_size = vocab_size

    def __call__(self, texts: list[str], **kwargs):
        tokens = self._base(texts, **kwargs)
        tokens["input_ids"] = [[i % self._vocab_size for i in ids] for ids in tokens["input_ids"]]
        return tokens


def random_mode_tokenizer(spec: ClipModelSpec, config) -> tuple:
    """The tokenizer random-weights mode uses, and a note saying which (also logged):
    `tokenizer:` from the spec (a local directory or a cached hub id), else one saved beside the
    architecture, else OpenAI CLIP's BPE for CLIP and a folded stand-in for SigLIP."""
    source = spec.architecture or spec.model
    for candidate in (spec.tokenizer, source):
        if candidate:
            tokenizer = _local_or_none(candidate, AutoTokenizer.from_pretrained)
            if tokenizer is not None:
                return tokenizer, f"transformers:{candidate}"
    if spec.tokenizer:
        raise ModelLoadError(f"tokenizer {spec.tokenizer!r} is not a local directory or cached id")
    if config.model_type == "clip":
        return openai_clip_tokenizer(), "openai-clip-bpe"
    logger.warning(
        "RANDOM WEIGHTS: no %s tokenizer for %s offline; using a stand-in (OpenAI CLIP BPE ids "
        "folded into its vocabulary). Set `tokenizer:` to a local directory for the real one.",
        config.model_type,
        spec.model,
    )
    return FoldedTokenizer(int(config.text_config.vocab_size)), "stand-in:folded-openai-clip-bpe"


def _projected(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
