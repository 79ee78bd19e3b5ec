"""Scoring deployment: CLIP score / cosine for pairs, zero-shot tags."""

from __future__ import annotations

import numpy as np
from ray import serve

from clipfleet.observability import metrics
from clipfleet.observability.tracing import traced
from clipfleet.scoring import Activation, ScoreSemantics, clip_scores, zero_shot


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Scorer:
    @traced("Scorer.score_pair")
    def score_pair(
        self,
        image_embedding: np.ndarray,
        text_embedding: np.ndarray,
        semantics: ScoreSemantics | None = None,
    ) -> dict:
        with metrics.timed_stage("score"):
            return clip_scores(image_embedding, text_embedding, semantics)[0]

    @traced("Scorer.tag")
    def tag(
        self,
        image_embedding: np.ndarray,
        label_embeddings: np.ndarray,
        labels: list[str],
        logit_scale: float,
        top_k: int,
        activation: Activation = "softmax",
        logit_bias: float = 0.0,
        threshold: float | None = None,
    ) -> list[dict]:
        with metrics.timed_stage("score"):
            return zero_shot(
                image_embedding,
                label_embeddings,
                labels,
                logit_scale,
                top_k,
                activation,
                logit_bias,
                threshold,
            )

    def describe(self) -> dict:
        return {"ready": True, "replica_id": serve.get_replica_context().replica_id.unique_id}
