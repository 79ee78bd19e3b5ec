"""What the service's operations return: the arrays and scores they produced and the `Target`
that served them. The API layer encodes them for the wire (clipfleet/api/encoding.py), once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clipfleet.ingress.targets import Target
from clipfleet.models.embedding_space import VectorSpace

Activation = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class Embeddings:
    """One row per input, as the encoder returned it (float32, unit length)."""

    target: Target
    vectors: np.ndarray  # (N, D)
    token_counts: list[int] | None = None  # per input, when asked (texts; images count 0)
    space: VectorSpace | None = None  # when the operation asked for it (mixed items)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class Scores:
    """/v1/score: per pair, the Scorer's `clip_score`, `cosine` (and `probability`)."""

    target: Target
    results: list[dict[str, Any]]
    activation: Activation


@dataclass(frozen=True)
class Tags:
    target: Target
    tags: list[dict[str, Any]]  # label, confidence; best first
    activation: Activation


@dataclass(frozen=True)
class Relevance:
    """The model's own score of each pair, with what embedding the items cost."""

    target: Target
    scores: list[float]
    activation: Activation
    token_counts: list[int]
    space: VectorSpace
