"""py-spy profiles of chosen processes over a load window, summarised by function.

`cpu_breakdown --py-spy DIR` records each target process (a Ray worker by the actor it hosts,
e.g. `Ingress`, `serve proxy`) with `py-spy record --format raw --nonblocking` for the measured
window, writes the collapsed stacks to DIR and prints, per process, the functions holding the
most samples: inclusive (the frame anywhere on the stack) and self (the innermost Python frame,
which includes the C code it calls). Idle threads are not sampled, so samples track CPU.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from loadtests.thread_cpu import py_spy_path

RATE_HZ = 50
# Frames every sample passes through (thread and event-loop plumbing), left out of "inclusive".
_PLUMBING = ("threading.py", "asyncio/", "concurrent/futures/thread.py", "<module>")


def start_recording(targets: dict[int, str], folder: Path, seconds: float) -> list:
    """One `py-spy record` per pid, for `seconds`; returns (label, pid, path, process)."""
    py_spy = py_spy_path()
    if py_spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    folder.mkdir(parents=True, exist_ok=True)
    running = []
    for pid, label in targets.items():
        path = folder / f"{label.replace(' ', '_')}-{pid}.txt"
        command = [py_spy, "record", "--format", "raw", "--nonblocking", "-r", str(RATE_HZ)]
        command += ["-d", str(int(seconds)), "-p", str(pid), "-o", str(path)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.append((label, pid, path, process))
    return running


def finish(running: list, top: int = 12) -> dict[str, dict]:
    """Wait for the recordings and summarise them: {"label pid": {samples, inclusive, self}}."""
    summaries = {}
    for label, pid, path, process in running:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        if path.exists():
            summaries[f"{label} {pid}"] = summarise(path.read_text(), top)
    return summaries


def summarise(collapsed: str, top: int) -> dict:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            if not frame.startswith(_PLUMBING) and not any(p in frame for p in _PLUMBING):
                inclusive[frame] += samples
    return {
        "samples": total,
        "inclusive": {f: round(n / total, 3) for f, n in inclusive.most_common(top)},
        "self": {f: round(n / total, 3) for f, n in own.most_common(top)},
    }


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def print_summaries(summaries: dict[str, dict]) -> None:
    for name, summary in summaries.items():
        print(f"\n  py-spy {name}: {summary['samples']} samples")
        for kind in ("self", "inclusive"):
            print(f"    {kind}:")
            for frame, share in summary[kind].items():
                print(f"      {share * 100:5.1f}%  {frame}")
