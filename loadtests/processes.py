"""Stopping a server started in its own session (`serve run`, the image and baseline servers)."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def stop(process: subprocess.Popen) -> None:
    """Stop a server and everything it started: the next `serve run` must not find the last
    run's Ray processes still shutting down (it could attach to the dying cluster)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    _, alive = psutil.wait_procs(children, timeout=30)
    for leftover in alive:
        leftover.kill()
    psutil.wait_procs(alive, timeout=10)
