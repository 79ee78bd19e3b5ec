"""Compressed vectors: scalar int8 / uint8 with a per-model range, and packed sign bits.

The range: each model's `int8_limit` L is the largest |component| of its L2-normalised
embeddings of the calibration set (clipfleet.models.calibration: one generated image of each of its
eight pattern kinds, and every calibration prompt), measured when the replica loads the model
and shown with its details (`GET /v1/models/{id}`). For vectors truncated to d of the model's D
dimensions (and re-normalised) the limit is L_d = L * sqrt(D / d), rounded to 6 decimals.

    int8  = clip(rint(x * 127 / L_d), -128, 127)
    uint8 = int8 + 128                                  (0..255)
    ubinary = packbits(x > 0)                           (8 dimensions per byte, first is the MSB)
    binary  = ubinary - 128                             (as int8, Cohere's signed packing)

One symmetric scale for every dimension keeps dot products proportional: int8 vectors rank as
the float vectors do, up to rounding. Values beyond the calibration range saturate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from clipfleet.models.calibration import CALIBRATION_PROMPTS, calibration_images
from clipfleet.models.vectors import encode

VectorType = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]
VECTOR_TYPES: tuple[str, ...] = ("float", "base64", "int8", "uint8", "binary", "ubinary")
CALIBRATION_KINDS = 8  # calibration_images(n): image i has pattern kind i % 8
LIMIT_DECIMALS = 6


def calibration_limit(model: Any) -> float:
    """L for `model`: max |x| over its embeddings of the calibration images (one per pattern
    kind) and prompts, rounded up to LIMIT_DECIMALS so the published value is the one used."""
    vectors = [model.embed_images(calibration_images(CALIBRATION_KINDS))]
    if hasattr(model, "encode_texts"):
        vectors.append(model.encode_texts(list(CALIBRATION_PROMPTS)))
    largest = float(max(np.abs(matrix).max() for matrix in vectors))
    return math.ceil(largest * 10**LIMIT_DECIMALS) / 10**LIMIT_DECIMALS


def limit_for(limit: float, dim: int, full_dim: int) -> float:
    """The range of vectors truncated to `dim` of `full_dim` dimensions and re-normalised."""
    if dim >= full_dim:
        return limit
    return round(limit * math.sqrt(full_dim / dim), LIMIT_DECIMALS)


def to_int8(matrix: np.ndarray, limit: float) -> np.ndarray:
    return np.clip(np.rint(matrix.astype(np.float64) * (127.0 / limit)), -128, 127).astype(np.int8)


def to_ubinary(matrix: np.ndarray) -> np.ndarray:
    return np.packbits(matrix > 0, axis=-1)


def encode_as(matrix: np.ndarray, kind: str, limit: float | None) -> list:
    """(N, d) float32 rows in one of VECTOR_TYPES, as JSON-ready lists (base64: strings)."""
    if kind in ("float", "base64"):
        return encode(matrix, kind)
    if kind == "ubinary":
        return to_ubinary(matrix).tolist()
    if kind == "binary":
        return (to_ubinary(matrix).astype(np.int16) - 128).tolist()
    if limit is None:
        raise ValueError(f"{kind} needs the model's int8 range")
    signed = to_int8(matrix, limit)
    if kind == "int8":
        return signed.tolist()
    if kind == "uint8":
        return (signed.astype(np.int16) + 128).tolist()
    raise ValueError(f"unknown vector type {kind!r}")


def encode_all(
    matrix: np.ndarray, kinds: Sequence[str], limit: float | None, full_dim: int
) -> dict[str, list]:
    """Each requested type of the same (N, d) rows; `limit` is the model's full-size L."""
    scaled = None if limit is None else limit_for(limit, int(matrix.shape[1]), full_dim)
    return {kind: encode_as(matrix, kind, scaled) for kind in dict.fromkeys(kinds)}
