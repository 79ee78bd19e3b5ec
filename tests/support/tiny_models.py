"""Tiny random-init models on disk, loaded through the service's own loading code."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from torchvision.models import get_model
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from clipfleet.models.hf_clip_backend import openai_clip_tokenizer

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_HF_CFG = {
    "projection_dim": 32,
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "image_size": 64,
        "patch_size": 16,
    },
}


def make_open_clip_dir(folder: Path, seed: int = 0) -> Path:
    """An open_clip `local-dir:` folder: open_clip_config.json + random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": {}})
    )
    model = open_clip.create_model("local-dir:" + str(folder), load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def make_hf_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A transformers save_pretrained folder: config, weights, tokenizer, image processor."""
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**TINY_HF_CFG)).save_pretrained(folder)
    openai_clip_tokenizer().save_pretrained(folder)
    size = TINY_HF_CFG["vision_config"]["image_size"]
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(folder)
    return folder


def make_resnet_file(path: Path, model: str = "resnet18", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(get_model(model, weights=None).state_dict(), path)
    return path
