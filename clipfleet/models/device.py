"""Device selection, autocast and thread settings shared by every encoder."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DEVICE_ENV = "CLIPFLEET_DEVICE"
THREADS_ENV = "CLIPFLEET_TORCH_THREADS"


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    fp16: bool

    @property
    def name(self) -> str:
        return str(self.device)


def choose_device(requested: str | None = None, cuda_available: bool | None = None) -> DevicePlan:
    """CUDA with fp16 autocast when there is a GPU, CPU in fp32 otherwise.

    `requested` (or CLIPFLEET_DEVICE) may force "cpu" or "cuda[:N]"; asking for CUDA where there
    is none is an error rather than a silent fallback.
    """
    requested = requested or os.environ.get(DEVICE_ENV) or "auto"
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "auto":
        requested = "cuda" if has_cuda else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not has_cuda:
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return DevicePlan(device=device, fp16=device.type == "cuda")


def autocast_for(plan: DevicePlan) -> contextlib.AbstractContextManager:
    if plan.fp16:
        return torch.autocast(device_type=plan.device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def torch_threads_for(num_cpus: float | None) -> int:
    """Threads for a replica that owns `num_cpus` logical CPUs (env override wins)."""
    override = os.environ.get(THREADS_ENV)
    if override:
        return max(1, int(override))
    if not num_cpus:
        return max(1, os.cpu_count() or 1)
    return max(1, math.ceil(num_cpus))


def set_torch_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)


@contextlib.contextmanager
def inference(plan: DevicePlan) -> Iterator[None]:
    with torch.inference_mode(), autocast_for(plan):
        yield


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def gpu_memory(plan: DevicePlan) -> dict[str, int] | None:
    if plan.device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(plan.device)
    return {"used_bytes": total - free, "total_bytes": total}
