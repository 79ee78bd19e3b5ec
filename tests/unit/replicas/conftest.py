"""Fixtures the replica tests share."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import make_open_clip_dir


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A multiplexed profile's checkpoint directory: tiny open_clip models `alpha` and `beta`
    (different seeds: different vectors)."""
    root = tmp_path_factory.mktemp("replicas-multiplexed")
    for seed, model_id in enumerate(("alpha", "beta"), start=1):
        make_open_clip_dir(root / model_id, seed=seed)
    return root
