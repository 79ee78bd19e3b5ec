"""Size a CPU forward to the cores the node really has, and share them between busy encoders.

A Ray `num_cpus` reservation is a scheduling hint, not a core budget: `clip_fast` reserving 0.4
CPU on a 2-core node still has both cores to run on, and a forward with one torch thread leaves
one idle. So an encoder's forward gets `cores / slots` threads (`slots` forwards may run at once
on a node), and a per-node *forward lease* (a file lock per slot, shared by every encoder process
on the node) keeps two busy encoders from running 2 x cores threads on the same cores: one busy
model uses them all, two busy ones take turns. GPU forwards take no lease.

Knobs (environment, e.g. a deployment's runtime_env.env_vars; docs/performance.md):
CLIPFLEET_TORCH_THREADS (threads per forward), CLIPFLEET_FORWARD_SLOTS (concurrent CPU forwards
per node; default one per 8 cores, at least 1; 0 turns the lease off), CLIPFLEET_LEASE_DIR.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clipfleet.models.device import THREADS_ENV

SLOTS_ENV = "CLIPFLEET_FORWARD_SLOTS"
LEASE_DIR_ENV = "CLIPFLEET_LEASE_DIR"
CORES_PER_SLOT = 8
_POLL_S = 0.002

# True while a forward runs in the slot of one parked in this process (a bulk forward paused
# for interactive work: clipfleet.replicas.preempt): it takes no slot of its own, since the
# parked one computes nothing until it resumes, and waiting for its slot would never end.
LENT_SLOT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "clipfleet_lent_slot", default=False
)


def _cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The container's CPU quota (cgroup v2 `cpu.max`), rounded up; None when unlimited."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def node_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a container CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def forward_slots(cores: int | None = None) -> int:
    """How many CPU forwards may run at once on this node (0: no lease)."""
    override = os.environ.get(SLOTS_ENV)
    if override is not None and override.strip():
        return max(0, int(override))
    return max(1, (cores or node_cores()) // CORES_PER_SLOT)


def forward_threads(
    num_cpus: float | None, cores: int | None = None, slots: int | None = None
) -> int:
    """Torch / ORT threads for one forward: the node's cores shared by its forward slots, or
    the replica's reservation where that is larger (CLIPFLEET_TORCH_THREADS wins)."""
    override = os.environ.get(THREADS_ENV)
    if override:
        return max(1, int(override))
    cores = cores or node_cores()
    slots = forward_slots(cores) if slots is None else slots
    share = cores // max(1, slots)
    return max(1, min(cores, max(share, math.ceil(num_cpus or 0))))


class ForwardLease:
    """At most `slots` holders at a time across every process on the node (flock per slot).

    Each acquisition opens its own file description, so two threads of one process contend
    like two processes do. The lock dies with its process: a crashed replica frees its slot.
    """

    def __init__(self, slots: int, directory: str | Path | None = None) -> None:
        if slots < 1:
            raise ValueError(f"a lease needs at least one slot, got {slots}")
        root = directory or os.environ.get(LEASE_DIR_ENV) or tempfile.gettempdir()
        self.directory = Path(root) / "clipfleet-forward-lease"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self._paths = [self.directory / f"slot-{index}.lock" for index in range(slots)]
        self._stats_lock = threading.Lock()
        self.acquired = 0
        self.waited_s = 0.0

    def _try(self, path: Path, blocking: bool) -> int | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _acquire(self) -> int:
        if self.slots == 1:
            return self._try(self._paths[0], blocking=True)
        while True:
            for path in self._paths:
                fd = self._try(path, blocking=False)
                if fd is not None:
                    return fd
            time.sleep(_POLL_S)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        started = time.perf_counter()
        fd = self._acquire()
        with self._stats_lock:
            self.acquired += 1
            self.waited_s += time.perf_counter() - started
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def wrap(self, forward: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def leased(items: Any) -> Any:
            if LENT_SLOT.get():
                return forward(items)
            with self.hold():
                return forward(items)

        return leased

    def stats(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "acquired": self.acquired,
            "waited_s": round(self.waited_s, 3),
        }
