"""Stopping a process tree: a server started in its own session (`serve run`, the benchmark's
image and baseline servers) or a test cluster's `ray start --block` node.

Used by the benchmarks (`loadtests/`) and the tests alike, so it lives here rather than in
either. Ray workers start sessions of their own, so the tree is walked, not just the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil

_SUSPEND_ROUNDS = 3


def stop_tree(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop `process` (started with `start_new_session=True`) and everything it started.

    With `grace_s` > 0 its group gets SIGINT and that long to exit, and its descendants as long
    again: `serve run` shuts Ray down cleanly, so the next run can't attach to a dying cluster.
    Whatever is left (everything, with `grace_s=0`: a node lost at once) is suspended, so nothing
    forks, and killed."""
    tree = _descendants(process.pid)  # now: orphans re-parent once their parent exits
    if grace_s > 0 and process.poll() is None:
        _signal_group(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
        psutil.wait_procs(tree, timeout=grace_s)
    _kill(process.pid, tree)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _kill(pid: int, known: list[psutil.Process]) -> None:
    found: dict[int, psutil.Process] = {}
    for _ in range(_SUSPEND_ROUNDS):  # a process forked while we suspended is found next round
        with contextlib.suppress(psutil.Error):
            known = [*known, psutil.Process(pid), *_descendants(pid)]
        for proc in known:
            if proc.pid not in found and proc.is_running():
                with contextlib.suppress(psutil.Error):
                    proc.suspend()
                    found[proc.pid] = proc
        known = [child for proc in found.values() for child in _descendants(proc.pid)]
    _signal_group(pid, signal.SIGKILL)
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    # The root is left to Popen.wait: reaped here, its exit status would be lost.
    psutil.wait_procs([proc for proc in found.values() if proc.pid != pid], timeout=15)
