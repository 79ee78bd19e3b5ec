"""How embeddings leave the API: Matryoshka truncation and the wire encoding.

`dimensions` keeps the first N components and re-normalises them to unit length (the
Matryoshka convention OpenAI's `dimensions` follows). `base64` is OpenAI's encoding: the
little-endian float32 bytes of each vector, base64-encoded.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np

from clipfleet.errors import InvalidRequestError

EncodingFormat = Literal["float", "base64"]


def truncate(matrix: np.ndarray, dimensions: int | None, param: str = "dimensions") -> np.ndarray:
    """(N, D) -> (N, dimensions), each row re-normalised; `dimensions` > D is a 422."""
    if dimensions is None or dimensions == matrix.shape[1]:
        return matrix
    if dimensions > matrix.shape[1]:
        raise InvalidRequestError(
            f"dimensions is {dimensions}; this model's embeddings have {matrix.shape[1]}",
            param,
            status=422,
        )
    head = matrix[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return (head / np.where(norms > 0, norms, 1)).astype(np.float32, copy=False)


def encode(matrix: np.ndarray, encoding_format: EncodingFormat) -> list:
    """Rows as lists of floats, or as base64 of their little-endian float32 bytes."""
    if encoding_format == "base64":
        rows = np.ascontiguousarray(matrix, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    return matrix.tolist()
