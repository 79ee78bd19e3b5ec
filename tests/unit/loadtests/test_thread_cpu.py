"""cpu_breakdown --threads: a process's CPU split by thread, Python threads named by py-spy."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from loadtests import thread_cpu

BUSY = """
import threading, time
def spin():
    while True:
        sum(range(10_000))
for index in range(2):
    threading.Thread(target=spin, name=f"busy-pool_{index}", daemon=True).start()
print("started", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(thread_cpu.py_spy_path() is None, reason="py-spy names the threads")
def test_cpu_is_split_by_thread_and_a_pools_threads_are_summed():
    child = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        before = thread_cpu.snapshot([child.pid])
        time.sleep(1.0)
        after = thread_cpu.snapshot([child.pid])
        split = thread_cpu.per_thread(before, after, images=10)
    finally:
        child.kill()
        child.wait()
    assert next(iter(split)) == "busy-pool"  # both spinning threads, under the pool's name
    assert split["busy-pool"] > 0.05  # > 0.5 CPU-s over 10 "images"
    assert "busy-pool_0" not in split
    assert split.get("MainThread", 0.0) < split["busy-pool"] / 10  # it sleeps
