"""The scoring replica without Ray: CLIP score / cosine for pairs, zero-shot tags."""

from __future__ import annotations

import numpy as np

from clipfleet.observability import metrics
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.scoring import ScoreSemantics, clip_scores, semantic_tags


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
    async def tag(self, *args, **kwargs) -> list[dict]:
        """clipfleet.scoring.semantic_tags (image vector, label vectors, labels, the model's
        semantics, top_k, threshold): the one tagging path of /v1/tag and batch jobs."""
        with metrics.timed_stage("score"):
            return semantic_tags(*args, **kwargs)

    def describe(self) -> dict:
        return {"ready": True, "replica_id": self.replica_id}
