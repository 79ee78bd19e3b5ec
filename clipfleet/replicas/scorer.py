"""The scoring replica without Ray: CLIP score / cosine for pairs, zero-shot tags."""

from __future__ import annotations

import numpy as np

from clipfleet.observability import metrics
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.scoring import ScoreSemantics, clip_scores, zero_shot


class Scorer:
    def __init__(self, replica_id: str = LOCAL_REPLICA) -> None:
        self.replica_id = replica_id

    # Coroutines though they never wait: Serve runs a plain method on a thread pool, a hop
    # that costs more than these few vector operations.
    @traced("Scorer.score_pair")
    async def score_pair(
        self,
        image_embedding: np.ndarray,
        text_embedding: np.ndarray,
        semantics: ScoreSemantics | None = None,
    ) -> dict:
        with metrics.timed_stage("score"):
            return clip_scores(image_embedding, text_embedding, semantics)[0]

    @traced("Scorer.tag")
    async def tag(self, image_embedding: np.ndarray, label_embeddings: np.ndarray, *args, **kwargs):
        """clipfleet.scoring.zero_shot's tags (labels, logit_scale, top_k, activation, ...)."""
        with metrics.timed_stage("score"):
            return zero_shot(image_embedding, label_embeddings, *args, **kwargs)

    def describe(self) -> dict:
        return {"ready": True, "replica_id": self.replica_id}
