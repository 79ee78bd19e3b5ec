"""CPU seconds used by a server's whole process tree over a window (user + system, every core).

A server's cost per image is (CPU seconds of its process tree during the measured window) /
(images served in it). The tree is the server's process and every descendant: for `serve run`,
the Ray processes it started (GCS, raylet, dashboard, the Serve controller, proxy and replicas).
Each process counts its own time and that of its children it has reaped (psutil's
`children_user` / `children_system`), so a process that exits inside the window is still
counted, through its parent. Time of a process re-parented outside the tree is lost.
"""

from __future__ import annotations

import psutil


def tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in tree:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # exited between the walk and the read: its parent counts it next time
        total += times.user + times.system + times.children_user + times.children_system
    return total


class TreeCpu:
    """`start()` then `stop()`: the CPU seconds the tree of `pid` used in between."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._started = 0.0
        self.seconds: float | None = None

    def start(self) -> None:
        self._started = tree_cpu_seconds(self.pid)

    def stop(self) -> None:
        self.seconds = tree_cpu_seconds(self.pid) - self._started
