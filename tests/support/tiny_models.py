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


# -- SigLIP ------------------------------------------------------------------------------------
SPM_VOCAB_SIZE = 64
TINY_SIGLIP_CONTEXT = 16
_SPM_LINES = [
    "a photo of a cat",
    "a dog on a skateboard, at dusk",
    "a picture of a bird in the sky",
    "long-hair short-hair medium-hair rabbit hamster fish turtle snake lizard",
] * 20


def make_sentencepiece_tokenizer(folder: Path) -> Path:
    """A SigLIP tokenizer directory (spiece.model + tokenizer_config.json): a SentencePiece
    model trained on a few lines, wrapped in transformers' SiglipTokenizer."""
    import io

    import sentencepiece
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    trained = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_SPM_LINES),
        model_writer=trained,
        vocab_size=SPM_VOCAB_SIZE,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    model_file = folder / "spiece.model"
    model_file.write_bytes(trained.getvalue())
    SiglipTokenizer(
        vocab_file=str(model_file), model_max_length=TINY_SIGLIP_CONTEXT
    ).save_pretrained(folder)
    return folder


TINY_OPEN_CLIP_SIGLIP_CFG = {
    "embed_dim": 32,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {
        "context_length": TINY_SIGLIP_CONTEXT,
        "vocab_size": SPM_VOCAB_SIZE,
        "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 64,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}


def make_open_clip_siglip_dir(folder: Path, seed: int = 0, logit_bias: float = -3.5) -> Path:
    """An open_clip `local-dir:` SigLIP (custom text tower, learned logit_bias) with its
    SentencePiece tokenizer saved beside the weights, as open_clip's hub exports have it."""
    make_sentencepiece_tokenizer(folder)
    torch.manual_seed(seed)
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP_SIGLIP_CFG, "preprocess_cfg": preprocess})
    )
    model = open_clip.create_model("local-dir:" + str(folder), load_weights=False)
    with torch.no_grad():
        model.logit_bias.fill_(logit_bias)  # not the init value: tests see it read from weights
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def _tiny_siglip_text_vision(**vision) -> tuple[dict, dict]:
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": TINY_SIGLIP_CONTEXT,
        "vocab_size": SPM_VOCAB_SIZE,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": None,
    }
    vision_cfg = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": 16,
        **vision,
    }
    return text, vision_cfg


def make_hf_siglip_dir(folder: Path, seed: int = 0, version: int = 1) -> Path:
    """A transformers SigLIP (version=1) or SigLIP 2 (version=2) save_pretrained folder with its
    SentencePiece tokenizer and image processor."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    torch.manual_seed(seed)
    if version == 1:
        text, vision = _tiny_siglip_text_vision(image_size=64)
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": 64, "width": 64})
    else:
        text, vision = _tiny_siglip_text_vision(num_patches=16)
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
        processor = Siglip2ImageProcessor(max_num_patches=16, patch_size=16)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    make_sentencepiece_tokenizer(folder)
    return folder
