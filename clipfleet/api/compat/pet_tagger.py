"""Seed 002, the pet-tagging "Python CLIP service": `POST /tag` with a multipart image.

The seed documents "tags with confidence scores" over two fixed label sets (pet types, fur
types) and leaves the body open; its service answered a bare JSON list, best first, of the
labels whose softmax probability (over all twelve labels, each label text used as its own
prompt) is above 0.01. We answer that list; each item carries `label` and `score` (the
service's names) and `confidence` (the same number, our v1 name). The image is the multipart
field `file` (also accepted as `image`). Its model (clip-vit-base-patch32) maps to `fast`;
the model used is in the X-Clipfleet-Model response header. Each item also says its
`activation`: `softmax` (CLIP: the scores share one distribution over the labels) or `sigmoid`
(SigLIP: each label's own probability, several may apply; only those >= 0.5 are listed).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Response, UploadFile
from pydantic import BaseModel

from clipfleet.api.compat.common import Service, profile_for, upload_source
from clipfleet.ingress.targets import MODEL_HEADER

router = APIRouter(tags=["compat: seed 002 (pet tagging)"])
PROFILE = "fast"
PET_TYPES = ("cat", "dog", "hamster", "rabbit", "bird", "fish", "turtle", "snake", "lizard")
FUR_TYPES = ("long-hair", "short-hair", "medium-hair")
LABELS = PET_TYPES + FUR_TYPES
MIN_SCORE = 0.01

Upload = Annotated[UploadFile | None, File()]


class PetTag(BaseModel):
    label: str
    score: float
    confidence: float
    activation: Literal["softmax", "sigmoid"] = "softmax"


@router.post("/tag", response_model=list[PetTag])
async def tag(service: Service, response: Response, file: Upload = None, image: Upload = None):
    source = await upload_source(file, image, names="file")
    result = await service.tag(
        source, LABELS, len(LABELS), "{label}", profile_for(service, PROFILE)
    )
    response.headers[MODEL_HEADER] = result.target.model
    return [
        {
            "label": tag["label"],
            "score": tag["confidence"],
            "confidence": tag["confidence"],
            "activation": result.activation,
        }
        for tag in result.tags
        if tag["confidence"] > MIN_SCORE
    ]
