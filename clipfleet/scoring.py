"""CLIP score, cosine and zero-shot tagging over L2-normalised embeddings."""

from __future__ import annotations

import numpy as np


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> list[dict]:
    """Row i of each -> {cosine, clip_score = max(100 * cosine, 0)}."""
    images = _normalized(np.atleast_2d(image_embeddings))
    texts = _normalized(np.atleast_2d(text_embeddings))
    if images.shape != texts.shape:
        raise ValueError(f"mismatched embeddings: {images.shape} vs {texts.shape}")
    cosines = np.einsum("nd,nd->n", images, texts).astype(np.float64)
    return [
        {"clip_score": max(100.0 * cosine, 0.0), "cosine": cosine} for cosine in cosines.tolist()
    ]


def zero_shot(
    image_embedding: np.ndarray,
    label_embeddings: np.ndarray,
    labels: list[str],
    logit_scale: float,
    top_k: int,
) -> list[dict]:
    """Softmax over labels of logit_scale * cosine; the top_k as {label, confidence}."""
    image = _normalized(np.asarray(image_embedding).reshape(1, -1))[0]
    label_vectors = _normalized(np.atleast_2d(label_embeddings))
    logits = logit_scale * (label_vectors @ image).astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[: max(1, top_k)]
    return [{"label": labels[i], "confidence": float(probabilities[i])} for i in order]
