"""CLIP score, cosine and zero-shot tagging over L2-normalised embeddings.

A model's score semantics say how a similarity becomes a confidence: CLIP models were trained
with a softmax over the batch (`softmax`: tags are a distribution over the label set), SigLIP
models with a per-pair sigmoid and a learned bias (`sigmoid`: each label is an independent
yes/no probability, so several labels, or none, may apply).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Activation = Literal["softmax", "sigmoid"]
DEFAULT_TAG_THRESHOLD = 0.5


@dataclass(frozen=True)
class ScoreSemantics:
    """How a model's logits are formed and activated: logit = logit_scale * cos + logit_bias."""

    activation: Activation = "softmax"
    logit_scale: float = 100.0
    logit_bias: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # overflow-free form of 1 / (1 + e^-x)


def clip_scores(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    semantics: ScoreSemantics | None = None,
) -> list[dict]:
    """Row i of each -> {cosine, clip_score = max(100 * cosine, 0)}; sigmoid models add their
    own `probability` = sigmoid(logit_scale * cosine + logit_bias)."""
    images = _normalized(np.atleast_2d(image_embeddings))
    texts = _normalized(np.atleast_2d(text_embeddings))
    if images.shape != texts.shape:
        raise ValueError(f"mismatched embeddings: {images.shape} vs {texts.shape}")
    cosines = np.einsum("nd,nd->n", images, texts).astype(np.float64)
    results = [
        {"clip_score": max(100.0 * cosine, 0.0), "cosine": cosine} for cosine in cosines.tolist()
    ]
    if semantics is not None and semantics.activation == "sigmoid":
        logits = semantics.logit_scale * cosines + semantics.logit_bias
        for result, probability in zip(results, _sigmoid(logits).tolist(), strict=True):
            result["probability"] = probability
    return results


def relevance_scores(
    first: np.ndarray, second: np.ndarray, semantics: ScoreSemantics
) -> list[float]:
    """Row i of each -> the model's own score of the pair, from the /v1/score maths: the
    cosine for softmax (CLIP) models, sigmoid(logit_scale * cosine + logit_bias) for sigmoid
    (SigLIP) ones. Either way it orders pairs as the cosine does."""
    key = "probability" if semantics.activation == "sigmoid" else "cosine"
    return [row[key] for row in clip_scores(first, second, semantics)]


def semantic_tags(
    image_embedding: np.ndarray,
    label_embeddings: np.ndarray,
    labels: list[str],
    semantics: ScoreSemantics,
    top_k: int,
    threshold: float | None = None,
) -> list[dict]:
    """`zero_shot` with the model's own semantics: what /v1/tag and `clipfleet batch tag` return."""
    return zero_shot(
        image_embedding,
        label_embeddings,
        labels,
        semantics.logit_scale,
        top_k,
        semantics.activation,
        semantics.logit_bias,
        threshold,
    )


def zero_shot(
    image_embedding: np.ndarray,
    label_embeddings: np.ndarray,
    labels: list[str],
    logit_scale: float,
    top_k: int,
    activation: Activation = "softmax",
    logit_bias: float = 0.0,
    threshold: float | None = None,
) -> list[dict]:
    """Tags as {label, confidence}, best first, at most top_k.

    softmax: a distribution over the labels of logit_scale * cosine (single-label).
    sigmoid: sigmoid(logit_scale * cosine + logit_bias) per label, independent of the others;
    only labels at or above `threshold` (default 0.5) are returned (multi-label, maybe none).
    """
    image = _normalized(np.asarray(image_embedding).reshape(1, -1))[0]
    label_vectors = _normalized(np.atleast_2d(label_embeddings))
    logits = logit_scale * (label_vectors @ image).astype(np.float64)
    if activation == "sigmoid":
        probabilities = _sigmoid(logits + logit_bias)
        cut = DEFAULT_TAG_THRESHOLD if threshold is None else threshold
        order = [i for i in np.argsort(-probabilities, kind="stable") if probabilities[i] >= cut]
    elif activation == "softmax":
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = list(np.argsort(-probabilities, kind="stable"))
    else:
        raise ValueError(f"unknown activation {activation!r}")
    return [
        {"label": labels[i], "confidence": float(probabilities[i])} for i in order[: max(1, top_k)]
    ]
