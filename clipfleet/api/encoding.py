"""Where a service result meets the wire: vectors are truncated and encoded here, once, from the
result's array (float lists, base64, int8 / uint8 / binary / ubinary: clipfleet.models.quantize),
and the headers that name what served a request come from its target here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipfleet.ingress.results import Embeddings
from clipfleet.ingress.targets import VARIANT_HEADER, Target
from clipfleet.models.embedding_space import VectorSpace
from clipfleet.models.quantize import encode_all
from clipfleet.models.vectors import truncate

PROFILE_HEADER = "X-Clipfleet-Profile"


def served_headers(target: Target) -> dict[str, str]:
    """The profile and variant (or multiplexed model id) that served a request."""
    return {PROFILE_HEADER: target.profile.name, VARIANT_HEADER: target.variant}


def served_fields(target: Target) -> dict[str, str]:
    """The v1 bodies' `profile`, `variant`, `model`."""
    return {"profile": target.profile.name, "variant": target.variant, "model": target.model}


def wire_vectors(
    result: Embeddings,
    kinds: Sequence[str],
    dimensions: int | None = None,
    space: VectorSpace | None = None,
    param: str = "dimensions",
) -> tuple[dict[str, list], int]:
    """The result's rows truncated to `dimensions` (Matryoshka; `param` names the field) and
    encoded in each of `kinds`; the space gives the int8 range. Returns (rows by kind, dim)."""
    matrix = truncate(np.asarray(result.vectors, dtype=np.float32), dimensions, param)
    limit, full_dim = (space.int8_limit, space.dim) if space else (None, result.dim)
    return encode_all(matrix, kinds, limit, full_dim), int(matrix.shape[1])


def float_rows(result: Embeddings) -> list[list[float]]:
    """The rows as the replaced services answered them: plain float lists, as computed."""
    return result.vectors.tolist()
