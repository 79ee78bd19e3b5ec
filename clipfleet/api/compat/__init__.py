"""Drop-in routes for the five services clipfleet replaces (/work/shared/seeds, issue 8).

One router per seed; each handler calls the same ClipfleetService as /v1.
"""

from __future__ import annotations

from clipfleet.api.compat import (
    evaluator,
    local_embedder,
    openclip_embedder,
    pet_tagger,
    vector_translation,
)

routers = [
    vector_translation.router,
    evaluator.router,
    pet_tagger.router,
    local_embedder.router,
    openclip_embedder.router,
]

__all__ = ["routers"]
