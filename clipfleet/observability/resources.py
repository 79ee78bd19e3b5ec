"""CPU, RAM and GPU figures of this machine and of this process (health and status routes).

Shared by the seeds' health routes (clipfleet.api.compat) and the encoders' `describe()`,
which `/v1/status` gathers from every encoder replica.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import psutil

_GB = 1024**3
_MB = 1024**2
_PROCESS: psutil.Process | None = None


def system_resources() -> dict[str, Any]:
    """CPU and RAM of this process's machine; GPU figures when it sees a GPU.

    Under Ray the ingress holds no GPU, so the gpu_* figures are null there: the encoders'
    devices are reported by the health routes from `describe` instead.
    """
    memory = psutil.virtual_memory()
    resources: dict[str, Any] = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "memory_available_gb": round(memory.available / _GB, 2),
        "memory_used_gb": round(memory.used / _GB, 2),
        "gpu_memory_used_gb": None,
        "gpu_memory_total_gb": None,
        "gpu_memory_percent": None,
        "gpu_utilization_percent": None,
    }
    resources.update(gpu_resources())
    return resources


def gpu_resources(device: str | None = None) -> dict[str, Any]:
    """Memory used/total and utilisation of a CUDA device ({} without one, e.g. on CPU)."""
    # Only where torch is already loaded: importing it just for /health would cost the
    # (model-free, GPU-free under Ray) ingress replica hundreds of MB.
    torch = sys.modules.get("torch")
    which = (device,) if device else ()  # no argument: torch's current device
    try:
        if torch is None or not torch.cuda.is_available():
            return {}
        if device is not None and not device.startswith("cuda"):
            return {}
        free, total = torch.cuda.mem_get_info(*which)
    except Exception:  # no driver or a broken device: just no GPU figures
        return {}
    figures: dict[str, Any] = {
        "gpu_memory_used_gb": round((total - free) / _GB, 2),
        "gpu_memory_total_gb": round(total / _GB, 2),
        "gpu_memory_percent": round(100.0 * (total - free) / total, 2),
    }
    with contextlib.suppress(Exception):  # needs pynvml / NVML
        figures["gpu_utilization_percent"] = torch.cuda.utilization(*which)
    return figures


def process_resources(device: str | None = None) -> dict[str, Any]:
    """This process: CPU % since the previous call (0.0 on the first), RSS, and its GPU."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = psutil.Process()
    with _PROCESS.oneshot():
        figures: dict[str, Any] = {
            "pid": _PROCESS.pid,
            "cpu_percent": _PROCESS.cpu_percent(interval=None),
            "rss_mb": round(_PROCESS.memory_info().rss / _MB, 1),
            "num_threads": _PROCESS.num_threads(),
        }
    figures.update(gpu_resources(device) if device else {})
    return figures
