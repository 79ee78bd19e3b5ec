"""CPU, RAM and GPU figures of this machine and of this process (health and status routes).

Shared by the seeds' health routes (clipfleet.api.compat) and the encoders' `describe()`,
which `/v1/status` gathers from every encoder replica.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

_GB = 1024**3
_MB = 1024**2
_PROCESS: psutil.Process | None = None
SAMPLE_WINDOW_S = 1.0


class WindowedPercent:
    """CPU % over windows of at least SAMPLE_WINDOW_S, shared by every caller.

    psutil's `cpu_percent(interval=None)` measures since *its* previous call, so two probes
    arriving together would see a window of a few microseconds (0 % or 100 %). Here a new
    reading is taken only once the window has passed; callers in between get the last one.
    """

    def __init__(self, read: Callable[[], float], window_s: float = SAMPLE_WINDOW_S) -> None:
        self._read = read
        self._window_s = window_s
        self._lock = threading.Lock()
        self._read()  # starts psutil's first window
        self._sampled_at = time.monotonic()
        self._value = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now - self._sampled_at >= self._window_s:
                self._value = self._read()
                self._sampled_at = now
            return self._value


_SYSTEM_CPU = WindowedPercent(lambda: psutil.cpu_percent(interval=None))
_PROCESS_CPU: WindowedPercent | None = None


def system_resources() -> dict[str, Any]:
    """CPU and RAM of this process's machine; GPU figures when it sees a GPU.

    Under Ray the ingress holds no GPU, so the gpu_* figures are null there: the encoders'
    devices are reported by the health routes from `describe` instead.
    """
    memory = psutil.virtual_memory()
    resources: dict[str, Any] = {
        "cpu_percent": _SYSTEM_CPU(),
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
    """This process: CPU % over the last window (0.0 at first), RSS, and its GPU."""
    global _PROCESS, _PROCESS_CPU
    if _PROCESS is None:
        _PROCESS = psutil.Process()
        _PROCESS_CPU = WindowedPercent(_PROCESS.cpu_percent)
    with _PROCESS.oneshot():
        figures: dict[str, Any] = {
            "pid": _PROCESS.pid,
            "cpu_percent": _PROCESS_CPU(),
            "rss_mb": round(_PROCESS.memory_info().rss / _MB, 1),
            "num_threads": _PROCESS.num_threads(),
        }
    figures.update(gpu_resources(device) if device else {})
    return figures
