"""What compressed vectors must be, computed independently of clipfleet.models.quantize."""

from __future__ import annotations

import math

import numpy as np


def sign_bits(matrix: np.ndarray) -> np.ndarray:
    """Bit j of a row is 1 when component j is > 0; 8 per byte, the first the most significant."""
    bits = (np.asarray(matrix) > 0).astype(np.uint8)
    padded = np.zeros((bits.shape[0], math.ceil(bits.shape[1] / 8) * 8), np.uint8)
    padded[:, : bits.shape[1]] = bits
    weights = 2 ** np.arange(7, -1, -1)
    return (padded.reshape(bits.shape[0], -1, 8) * weights).sum(axis=2)


def formula_int8(matrix: np.ndarray, limit: float) -> np.ndarray:
    """docs/models.md: int8 = clip(round(x * 127 / L_d), -128, 127)."""
    return np.clip(np.round(np.asarray(matrix) * 127 / limit), -128, 127)
