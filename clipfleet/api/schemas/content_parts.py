"""Texts and images as the peers send them, turned into the service's items (one text or one
image each, with the request field it came from).

- Content parts (OpenAI / vLLM chat, Cohere `inputs`, vLLM score): `{"type": "text", "text"}`
  and `{"type": "image_url", "image_url": {"url": "https://... | data:image/..."}}`.
- Plain strings follow the request's `modality`: `text`, `image` (an http(s) URL or a data:
  URL), or `auto`, where a string is an image exactly when it is a `data:image/...` URL, or an
  http(s) URL without whitespace, at most 8192 characters, whose path (before `?` / `#`) ends
  in .jpg .jpeg .png .webp .gif .bmp .tif or .tiff (any case); every other string is text.
- Several parts make one vector only as CLIP can: text parts are joined with a space; one
  image part stands alone; an image with anything else is a 422 (send them as separate inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from clipfleet.api.schemas.v1 import HARD_MAX_BASE64, HARD_MAX_ITEMS, Text
from clipfleet.errors import InvalidRequestError
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.service_mixed import MixedItem

Modality = Literal["text", "image", "auto"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_URL_CHARS = 8192


class Peer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageUrl(Peer):
    url: str = Field(min_length=1, max_length=HARD_MAX_BASE64)
    detail: Literal["auto", "low", "high"] | None = Field(None, description="accepted, ignored")


class TextPart(Peer):
    type: Literal["text"]
    text: Text


class ImagePart(Peer):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
Parts = Annotated[list[ContentPart], Field(min_length=1, max_length=HARD_MAX_ITEMS)]


def is_image_reference(text: str) -> bool:
    """The `auto` rule (module docstring)."""
    if text[:11].lower() == "data:image/":
        return True
    if not text[:8].lower().startswith(("http://", "https://")) or len(text) > MAX_URL_CHARS:
        return False
    if any(character.isspace() for character in text):
        return False
    return urlsplit(text).path.lower().endswith(IMAGE_SUFFIXES)


def image_source(reference: str, param: str) -> ImageSource:
    """An image given as a string: an http(s) URL or a data: URL."""
    if reference[:8].lower().startswith(("http://", "https://")):
        return ImageSource(url=reference)
    if reference[:5].lower() == "data:":
        return ImageSource(base64=reference)
    raise InvalidRequestError("an image is an http(s) URL or a data: URL", param, status=422)


def string_item(text: str, modality: Modality, param: str, counted: bool = True) -> MixedItem:
    if modality == "image" or (modality == "auto" and is_image_reference(text)):
        return MixedItem(param, image=image_source(text, param), counted=counted)
    return MixedItem(param, text=text, counted=counted)


def parts_item(
    parts: Sequence[TextPart | ImagePart], param: str, counted: bool = True
) -> MixedItem:
    """One vector from several parts, as CLIP can make it (module docstring)."""
    images = [part for part in parts if isinstance(part, ImagePart)]
    if not images:
        return MixedItem(param, text=" ".join(part.text for part in parts), counted=counted)
    if len(parts) > 1:
        raise InvalidRequestError(
            "a CLIP embedding is of one image or of text, not both and not several images: send "
            "each image as its own input",
            param,
            status=422,
        )
    return MixedItem(param, image=image_source(images[0].image_url.url, param), counted=counted)


def part_item(part: TextPart | ImagePart, param: str, counted: bool = True) -> MixedItem:
    return parts_item([part], param, counted)
