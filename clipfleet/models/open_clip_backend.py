"""CLIP through open_clip: builtin names with a pretrained tag or file, hf-hub: ids, local-dir:."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.model import CLIP
from PIL import Image

from clipfleet.config import ClipModelSpec
from clipfleet.models.base import (
    ClipModel,
    ModelLoadError,
    TextTokens,
    report_random_weights,
    to_pil,
)
from clipfleet.models.device import DevicePlan
from clipfleet.models.square_input import torchvision_square_input
from clipfleet.models.text_bounds import bound_bpe_cache, usable_texts

_SCHEMAS = ("hf-hub:", "local-dir:")
DEFAULT_CONTEXT_LENGTH = open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH
logger = logging.getLogger("clipfleet.models")


def describe_weights(spec: ClipModelSpec, random_weights: bool) -> str:
    if random_weights:
        return "random"
    if spec.model.startswith("hf-hub:"):
        return f"hub:{spec.model.removeprefix('hf-hub:')}"
    if spec.model.startswith("local-dir:"):
        return f"dir:{spec.model.removeprefix('local-dir:')}"
    if spec.pretrained and Path(spec.pretrained).expanduser().is_file():
        return f"file:{spec.pretrained}"
    if spec.pretrained:
        return f"pretrained:{spec.pretrained}"
    raise ModelLoadError(
        f"open_clip model {spec.model!r} has no `pretrained` tag or file; set one "
        f"(see open_clip.list_pretrained()) or use CLIPFLEET_RANDOM_WEIGHTS=1 for random weights"
    )


def random_architecture(spec: ClipModelSpec) -> str:
    """The architecture to build when no weights may be loaded (hub configs can't be read)."""
    if spec.model.startswith("hf-hub:"):
        if not spec.architecture:
            raise ModelLoadError(
                f"random-weights mode can't read the architecture of {spec.model!r} offline; "
                "set `architecture` (an open_clip model name such as ViT-B-32) in its spec"
            )
        return spec.architecture
    return spec.architecture or spec.model


class OpenClipModel(ClipModel):
    def __init__(self, spec: ClipModelSpec, plan: DevicePlan, random_weights: bool) -> None:
        started = time.perf_counter()
        self.plan = plan
        weights = describe_weights(spec, random_weights)
        name = random_architecture(spec) if random_weights else spec.model
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=None if random_weights or name.startswith(_SCHEMAS) else spec.pretrained,
                load_weights=not random_weights,
                pretrained_text=not random_weights,
                require_pretrained=not random_weights,  # never a silent random fallback
                device=plan.device,
            )
            self._tokenizer, tokenizer_note = load_tokenizer(name, spec.tokenizer, random_weights)
            bound_bpe_cache(self._tokenizer)
        except Exception as exc:  # any failure to build/load is a start-up error with advice
            raise ModelLoadError(
                f"could not load open_clip model {spec.model!r} (pretrained={spec.pretrained!r}): "
                f"{exc}. Pre-fetch weights with `make weights` on a machine with internet, point "
                "`pretrained` at a local checkpoint file, or set CLIPFLEET_RANDOM_WEIGHTS=1 "
                "(random weights, tests only)."
            ) from exc
        if random_weights:
            report_random_weights(f"open_clip {name}")
        self._model = model.eval()
        self._preprocess = preprocess
        self._square_input = torchvision_square_input(preprocess)
        self._context_length = int(getattr(model, "context_length", DEFAULT_CONTEXT_LENGTH))
        self._finish_loading(model, "open_clip", spec, weights, started, tokenizer=tokenizer_note)

    def preprocess_image(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        if self._square_input is not None and (square := self._square_input(image)) is not None:
            return square  # already at the model's square: the transform's result, directly
        return self._preprocess(to_pil(image))

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(pixels)

    def _tokenize(self, texts: list[str]) -> list[TextTokens]:
        # The tokenizer pads to the context; HF tokenizers inside open_clip name their pad id.
        pad_id = getattr(getattr(self._tokenizer, "tokenizer", None), "pad_token_id", None)
        rows = self._tokenizer(usable_texts(texts, self._context_length))
        counts = (rows != (pad_id or 0)).sum(dim=1).tolist()
        return [TextTokens(row, count) for row, count in zip(rows, counts, strict=True)]

    def image_tower(self) -> torch.nn.Module:
        return self._model.visual

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [item.ids.tolist() for item in self.tokenize(texts)]

    def _token_features(self, tokens: list[TextTokens]) -> torch.Tensor:
        rows = torch.stack([item.ids for item in tokens]).to(self.plan.device)
        if can_trim_padding(self._model):
            return encode_text_trimmed(self._model, rows)
        return self._model.encode_text(rows)


def text_config(name: str) -> dict:
    """The `text_cfg` of an open_clip model name (builtin or local-dir:); {} if unknown."""
    if name.startswith("local-dir:"):
        config_file = Path(name.removeprefix("local-dir:")) / "open_clip_config.json"
        return json.loads(config_file.read_text(encoding="utf-8"))["model_cfg"].get("text_cfg", {})
    if name.startswith("hf-hub:"):
        return {}
    return (open_clip.get_model_config(name) or {}).get("text_cfg", {})


def load_tokenizer(name: str, tokenizer: str | None, random_weights: bool) -> tuple[Any, str]:
    """The model's tokenizer and a note saying which one it is.

    Models whose config names a Hugging Face tokenizer (SigLIP's SentencePiece) read it from
    the hub; `tokenizer` (a hub id or local directory) replaces that source, with the model's
    own context length and cleaning. In random-weights mode a hub tokenizer is only read from
    the local cache; if it isn't there, a stand-in (OpenAI CLIP's BPE, ids folded into the
    model's vocabulary) is used and a warning says so.
    """
    config = text_config(name)
    hub_name = config.get("hf_tokenizer_name")
    if tokenizer is None and not hub_name:
        return open_clip.get_tokenizer(name), "open_clip"
    if tokenizer is None and name.startswith("local-dir:"):
        tokenizer = name.removeprefix("local-dir:")
    source = tokenizer or hub_name
    kwargs = {
        "context_length": config.get("context_length", DEFAULT_CONTEXT_LENGTH),
        "tokenizer_mode": config.get("tokenizer_mode"),
        **config.get("tokenizer_kwargs", {}),
    }
    if random_weights:
        kwargs["local_files_only"] = True
    try:
        return open_clip.tokenizer.HFTokenizer(source, **kwargs), f"transformers:{source}"
    except (OSError, ValueError):
        if not random_weights or tokenizer is not None:
            raise
    logger.warning(
        "RANDOM WEIGHTS: tokenizer %r of %s is not available offline; using a stand-in (OpenAI "
        "CLIP BPE ids folded into its vocabulary). Set `tokenizer:` to a local directory for "
        "the real one.",
        source,
        name,
    )
    stand_in = FoldedSimpleTokenizer(kwargs["context_length"], config.get("vocab_size", 49408))
    return stand_in, "stand-in:folded-openai-clip-bpe"


class FoldedSimpleTokenizer:
    """open_clip's SimpleTokenizer with ids taken modulo the model's vocabulary size."""

    def __init__(self, context_length: int, vocab_size: int) -> None:
        self._base = open_clip.SimpleTokenizer(context_length=context_length)
        self._vocab_size = vocab_size

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self._base(texts) % self._vocab_size


def can_trim_padding(model: torch.nn.Module) -> bool:
    """True for open_clip's CLIP text towers whose padding can't change the pooled feature: a
    causal attention mask (no token sees the ones after it) and pooling at the end-of-text token."""
    return (
        isinstance(model, CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def encode_text_trimmed(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text on the tokens up to the batch's last end-of-text token.

    The tokenizer pads every text to the full context (77 for CLIP), and the text tower runs on
    all of it; with a causal mask the padding after the end-of-text token can't reach the pooled
    feature, so cutting it gives the same features (to float rounding) at a fraction of the cost:
    a 5-word prompt is ~10 tokens, ~8x cheaper on CPU. Tested against encode_text.
    """
    eos_id = getattr(model, "text_eos_id", None)
    if model.text_pool_type == "eos":
        pool_at = (tokens == eos_id).int().argmax(dim=-1)
    else:  # argmax: the end-of-text token has the highest id
        pool_at = tokens.argmax(dim=-1)
    length = int(pool_at.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pool_at]
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection
