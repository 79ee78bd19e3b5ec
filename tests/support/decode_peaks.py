"""Peak memory of clipfleet's decoder per hostile file, measured in a child process.

Pillow's codecs allocate in C, out of tracemalloc's sight, so the child reads its own resident
high-water mark (VmHWM), reset before each case through /proc/self/clear_refs. Big blocks are
mmapped (MALLOC_MMAP_THRESHOLD_), so what one case frees goes back to the system and can't
hide the next case's peak. Where clear_refs can't be written, each case gets a child of its own.

    python -m tests.support.decode_peaks NAME...   # one JSON line per case: name, cost, peak
    python -m tests.support.decode_peaks --held N NAME  # memory N open plans hold, waiting
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every codec used once before measuring: first-use allocations are not a decode's cost.
_WARM_UP = (("JPEG", "RGB"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("WEBP", "RGBA"), ("GIF", "P"))
_WARM_UP += (("BMP", "RGB"), ("TIFF", "RGB"))


def bomb_bytes(name: str) -> bytes:
    from tests.support.bombs import BUILDERS, decode_bomb
    from tests.support.hostile import GIANTS, giant_png

    return decode_bomb(name) if name in BUILDERS else giant_png(*GIANTS[name])


def _status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def _measure(names: list[str]) -> None:
    from PIL import Image

    from clipfleet.config import FetchLimits
    from clipfleet.images.decode import decode_image, open_image

    limits = FetchLimits()
    for fmt, mode in _WARM_UP:
        buffer = io.BytesIO()
        Image.new(mode, (600, 500)).save(buffer, fmt)
        decode_image(buffer.getvalue(), limits)
    for name in names:
        data = bomb_bytes(name)
        gc.collect()
        _reset_peak()
        before = _status_bytes("VmRSS:")
        plan = open_image(data, limits)  # the header stage counts too
        cost = plan.cost_bytes
        plan.decode()
        plan.close()
        peak = _status_bytes("VmHWM:") - before
        print(json.dumps({"name": name, "cost": cost, "peak": peak}), flush=True)


def _held(count: int, name: str) -> None:
    """What `count` plans (headers read, waiting for their budget) hold together."""
    from clipfleet.config import FetchLimits
    from clipfleet.images.decode import open_image

    data = bomb_bytes(name)
    open_image(data, FetchLimits())  # warm up
    gc.collect()
    before = _status_bytes("VmRSS:")
    plans = [open_image(data, FetchLimits()) for _ in range(count)]
    print(json.dumps({"name": name, "held": _status_bytes("VmRSS:") - before}))
    del plans


def can_reset_peak() -> bool:
    try:
        _reset_peak()
    except OSError:
        return False
    return True


def measure(names: list[str], timeout_s: float = 600) -> dict[str, dict]:
    """{name: {"cost", "peak"}}: the estimate and the measured peak of decoding each file."""
    groups = [names] if can_reset_peak() else [[name] for name in names]
    results = {}
    for group in groups:
        for line in _child(group, timeout_s).splitlines():
            row = json.loads(line)
            results[row.pop("name")] = row
    return results


def held_bytes(name: str, count: int) -> int:
    """Resident bytes `count` open plans of `name` hold while they wait for the budget."""
    return json.loads(_child(["--held", str(count), name], 120))["held"]


def _child(arguments: list[str], timeout_s: float) -> str:
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": str(Path(sys.executable).parent),
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    command = [sys.executable, "-m", "tests.support.decode_peaks", *arguments]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env, check=True
    ).stdout


if __name__ == "__main__":
    if sys.argv[1] == "--held":
        _held(int(sys.argv[2]), sys.argv[3])
    else:
        _measure(sys.argv[1:])
