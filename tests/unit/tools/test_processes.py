"""stop_tree: the one process-tree stopper of the benchmarks and the cluster tests."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from clipfleet.tools.processes import stop_tree

# A parent with a child in its group and a grandchild in a session of its own (as Ray workers).
_TREE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen(['sleep', '60'])\n"
    "subprocess.Popen(['setsid', 'sleep', '60'])\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)
_GRACEFUL = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *_: sys.exit(3))\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


def start(code: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout.readline() == b"up\n"
    time.sleep(0.2)  # `setsid` has exec'd its sleep
    return process, psutil.Process(process.pid).children(recursive=True)


def test_kills_the_whole_tree_at_once():
    process, children = start(_TREE)
    assert len(children) == 2
    started = time.monotonic()
    stop_tree(process, grace_s=0)
    assert time.monotonic() - started < 10
    assert process.returncode == -9
    assert not any(child.is_running() and child.status() != "zombie" for child in children)


def test_lets_the_process_exit_on_sigint_first():
    process, _ = start(_GRACEFUL)
    stop_tree(process, grace_s=10)
    assert process.returncode == 3  # its own SIGINT handler ran: a clean shutdown
