"""Errors keep their status, param and type across pickling and wrapping."""

from __future__ import annotations

import pickle

from clipfleet.errors import InvalidImageError, UpstreamError, find_clipfleet_error


def test_errors_survive_pickling_and_wrapping():
    error = UpstreamError("upstream said 404", "images[1]")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.status, clone.param, clone.message) == (502, "images[1]", "upstream said 404")
    try:
        try:
            raise InvalidImageError("bad")
        except InvalidImageError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert find_clipfleet_error(outer).type == "invalid_image"
