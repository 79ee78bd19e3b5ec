"""Scoring math: the clamped CLIP score and zero-shot softmax."""

from __future__ import annotations

import numpy as np
import pytest

from clipfleet.scoring import clip_scores, zero_shot


def test_clip_score_is_clamped_hundred_times_cosine():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text = np.array([[1.0, 0.0], [-1.0, 0.0], [3.0, 4.0]])
    scores = clip_scores(image, text)
    assert [round(s["cosine"], 6) for s in scores] == [1.0, -1.0, 1.0]
    assert [round(s["clip_score"], 6) for s in scores] == [100.0, 0.0, 100.0]


def test_zero_shot_softmax_uses_logit_scale():
    labels = ["a", "b"]
    tags = zero_shot(np.array([1.0, 0.0]), np.array([[1.0, 0.0], [0.0, 1.0]]), labels, 10.0, 2)
    assert tags[0]["label"] == "a"
    expected = np.exp(10.0) / (np.exp(10.0) + np.exp(0.0))
    assert tags[0]["confidence"] == pytest.approx(expected)
    assert sum(tag["confidence"] for tag in tags) == pytest.approx(1.0)
    assert len(zero_shot(np.array([1.0, 0.0]), np.eye(2), labels, 1.0, 1)) == 1
