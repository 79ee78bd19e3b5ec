"""CUDA path: runs where CUDA exists (fp16 autocast on the GPU), skips cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipfleet.config import ClipModelSpec, ResNetSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device, gpu_memory
from clipfleet.models.resnet import ResNetModel

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_clip_on_cuda_matches_cpu_in_fp16(model_dir):
    spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    gpu_plan = choose_device()
    assert gpu_plan.device.type == "cuda" and gpu_plan.fp16
    on_gpu = load_clip_model(spec, gpu_plan, random_weights=False)
    on_cpu = load_clip_model(spec, choose_device("cpu"), random_weights=False)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    gpu_vectors = on_gpu.embed_images([image, image])
    cpu_vectors = on_cpu.embed_images([image, image])
    assert gpu_vectors.dtype == np.float32
    assert np.sum(gpu_vectors * cpu_vectors, axis=1).min() > 0.99
    texts = on_gpu.encode_texts(["a cat"])
    assert float(np.sum(texts * on_cpu.encode_texts(["a cat"]))) > 0.99
    memory = gpu_memory(gpu_plan)
    assert memory is not None and 0 < memory["used_bytes"] <= memory["total_bytes"]
    assert on_gpu.info.device.startswith("cuda")


@pytest.mark.gpu
@needs_cuda
def test_resnet_on_cuda(model_dir):
    spec = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    model = ResNetModel(spec, choose_device(), random_weights=False)
    vectors = model.embed_images([np.zeros((64, 64, 3), np.uint8)])
    assert vectors.shape == (1, 512)


def test_cpu_plan_reports_no_gpu_memory():
    assert gpu_memory(choose_device("cpu")) is None
