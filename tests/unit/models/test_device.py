"""Device choice and torch's thread count."""

from __future__ import annotations

import pytest

from clipfleet.models.device import choose_device, torch_threads_for


def test_device_choice_without_cuda():
    plan = choose_device(cuda_available=False)
    assert plan.device.type == "cpu" and not plan.fp16
    assert choose_device(cuda_available=True).fp16
    with pytest.raises(RuntimeError, match="CUDA"):
        choose_device("cuda", cuda_available=False)
    assert torch_threads_for(0.5) == 1 and torch_threads_for(2) == 2
