"""The one `model` grammar every route speaks.

    <profile>               the profile's traffic split (stable / canary) decides the variant
    <profile>/<variant>     pins a variant, like the X-Clipfleet-Variant header
    <profile>:<model-id>    a model of a multiplexed profile (ids may contain `/`, e.g. org/repo)

`parse_model_ref` only checks the shape; whether the profile, variant or model id exists is the
service's question (unknown -> 404 `model_not_found`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@+-]{0,255}$")
MAX_MODEL_REF_CHARS = 32 + 1 + 256


@dataclass(frozen=True)
class ModelRef:
    profile: str
    variant: str | None = None
    model_id: str | None = None

    def __str__(self) -> str:
        if self.model_id is not None:
            return f"{self.profile}:{self.model_id}"
        if self.variant is not None:
            return f"{self.profile}/{self.variant}"
        return self.profile


def parse_model_ref(text: str) -> ModelRef:
    """Split a `model` string into profile, variant and model id; ValueError says what's wrong."""
    if not text or len(text) > MAX_MODEL_REF_CHARS:
        raise ValueError(f"model must be 1 to {MAX_MODEL_REF_CHARS} characters")
    head, colon, model_id = text.partition(":")
    profile, slash, variant = head.partition("/")
    if not NAME_PATTERN.match(profile):
        raise ValueError(
            f"model {text!r}: expected <profile>, <profile>/<variant> or <profile>:<model-id>, "
            "with a lowercase profile name"
        )
    if colon:
        if slash:
            raise ValueError(f"model {text!r}: a model id can't be combined with a variant")
        if not MODEL_ID_PATTERN.match(model_id) or ".." in model_id.split("/"):
            raise ValueError(f"model {text!r}: invalid model id {model_id!r}")
        return ModelRef(profile, model_id=model_id)
    if slash:
        if not NAME_PATTERN.match(variant):
            raise ValueError(f"model {text!r}: invalid variant name {variant!r}")
        return ModelRef(profile, variant=variant)
    return ModelRef(profile)
