"""CPU-seconds per thread of chosen processes over a load window (`cpu_breakdown --threads`).

A replica's CPU split by thread says what py-spy's samples cannot: py-spy sees Python threads
only, so an encoder's OpenMP workers (half of a 2-thread forward) and Ray's core threads are
missing from its percentages. Threads are read from psutil (user + system) before and after the
window and named by `py-spy dump` (the Python threads: the forward's executor thread, the
decode pool, the event loop); the others are `native` (OpenMP workers, Ray's core worker, gRPC).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

_POOL_INDEX = re.compile(r"_\d+$")
_DUMPED = re.compile(r'Thread (0x[0-9A-Fa-f]+|\d+) \([^)]*\): "([^"]*)"')


def snapshot(pids: list[int]) -> dict[tuple[int, int], float]:
    found = {}
    for pid in pids:
        try:
            threads = psutil.Process(pid).threads()
        except psutil.Error:
            continue
        for thread in threads:
            found[(pid, thread.id)] = thread.user_time + thread.system_time
    return found


def py_spy_path() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def python_names(pid: int) -> dict[int, str]:
    """Thread id -> name of the process's Python threads (empty without py-spy)."""
    py_spy = py_spy_path()
    if py_spy is None:
        return {}
    dumped = subprocess.run(
        [py_spy, "dump", "--nonblocking", "-p", str(pid)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {int(tid, 0): name for tid, name in _DUMPED.findall(dumped)}


def per_thread(
    before: dict[tuple[int, int], float], after: dict[tuple[int, int], float], images: int
) -> dict[str, float]:
    """CPU-seconds per image by thread name (a pool's threads summed: `clipfleet-decode`;
    threads py-spy does not name: `native`)."""
    names: dict[int, dict[int, str]] = {}
    spent: Counter[str] = Counter()
    for (pid, tid), seconds in after.items():
        if pid not in names:
            names[pid] = python_names(pid)
        name = _POOL_INDEX.sub("", names[pid].get(tid, "native"))  # a pool's threads together
        spent[name] += seconds - before.get((pid, tid), 0.0)
    return {
        name: round(seconds / images, 5)
        for name, seconds in sorted(spent.items(), key=lambda item: -item[1])
        if images and seconds > 0
    }
