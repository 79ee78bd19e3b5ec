"""Hung forwards fail the health check, and what waits behind them is released retryably; the
`fault_stall_s` drill; blame marked where a failure happens (no Ray: the plain encoder)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from clipfleet.errors import (
    InvalidImageError,
    ModelServingError,
    ReplicaStalledError,
    is_variant_fault,
)
from clipfleet.ingress.fanout import once_more_if_replica_lost
from clipfleet.replicas import serving
from clipfleet.replicas.clip import ClipEncoder
from clipfleet.replicas.preempt import PausableForward
from clipfleet.rollout.store import MemoryStore
from tests.support.fidelity import CPU

STALL_S, LIMIT_S = 1.5, 0.2


@pytest.fixture(autouse=True)
def quick_release(monkeypatch):
    monkeypatch.setattr(serving, "RELEASE_DELAY_S", 0.05)


def test_the_threshold_is_serves():
    """The release follows the failure after which Serve stops routing to the replica."""
    from ray.serve._private import constants

    assert (
        serving.UNHEALTHY_AFTER_FAILED_CHECKS == constants.REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD
    )


def test_a_hung_forward_fails_the_health_check_and_releases_what_waits(clip):
    config = {"cache": {"enabled": False}, "stall_limit_s": LIMIT_S, "fault_stall_s": STALL_S}

    async def scenario():
        await clip.reconfigure(config)
        await clip.check_health()  # no forward running: healthy
        hung = asyncio.ensure_future(clip.embed_text("the forward that hangs"))
        await asyncio.sleep(LIMIT_S / 4)
        await clip.check_health()  # running, within the limit
        queued = asyncio.ensure_future(clip.embed_texts(["behind it", "and this"]))
        await asyncio.sleep(LIMIT_S)
        for _ in range(serving.UNHEALTHY_AFTER_FAILED_CHECKS):
            with pytest.raises(ReplicaStalledError, match="stall_limit_s"):
                await clip.check_health()
        assert not hung.done() and not queued.done()  # held until Serve stops routing here
        started = time.monotonic()
        for waiting in (hung, queued):
            with pytest.raises(ReplicaStalledError) as caught:
                await waiting
        assert time.monotonic() - started < 1.0  # not waiting for the forward to return
        assert caught.value.status == 503 and caught.value.headers()["Retry-After"]
        with pytest.raises(ReplicaStalledError):  # refused at once from now on
            await clip.embed_text("a newcomer")
        with pytest.raises(ReplicaStalledError):  # and it never passes a check again
            await clip.check_health()
        return (await clip.describe())["stall"]

    stall = asyncio.run(scenario())
    assert stall["stalled"] and stall["stall_limit_s"] == LIMIT_S


def test_a_slow_forward_within_the_limit_is_only_slow(clip):
    async def scenario():
        await clip.reconfigure({"stall_limit_s": 5.0, "fault_stall_s": 0.3})
        text = asyncio.ensure_future(clip.embed_text("slow"))
        await asyncio.sleep(0.15)
        await clip.check_health()
        return await text

    assert asyncio.run(scenario()).shape[0] > 0
    assert clip.guard.slowest_forward_s >= 0.29 and not clip.guard.stalled


def test_the_drill_stalls_the_replicas_it_names_once_and_ends(clip_spec):
    """Two replicas of one deployment share the drill's slots: one stalls; a replacement
    started during the drill does not; setting it back to 0 ends it."""
    store = MemoryStore(shared=False)
    replicas = [ClipEncoder(clip_spec, CPU, replica_id=f"r-{i}") for i in range(3)]
    for replica in replicas:
        replica.guard.drills = store
    drill = {"fault_stall_s": 600.0}

    async def scenario():
        for replica in replicas[:2]:
            await replica.reconfigure(drill)
        armed = [replica.guard.stall_next_s for replica in replicas[:2]]
        await replicas[0].reconfigure(drill)  # the same drill applied again: no second stall
        await replicas[2].reconfigure(drill)  # a replacement, started during the drill
        again = [replica.guard.stall_next_s for replica in replicas]
        for replica in replicas:
            replica.guard.stall_next_s = 0.0
            await replica.reconfigure({"fault_stall_s": 0.0})
        assert store.read_prefix("") == {}
        await replicas[2].reconfigure({"fault_stall_s": 600.0, "fault_stall_replicas": 2})
        await replicas[1].reconfigure({"fault_stall_s": 600.0, "fault_stall_replicas": 2})
        return armed, again, [replica.guard.stall_next_s for replica in replicas]

    armed, again, second_drill = asyncio.run(scenario())
    assert sorted(armed) == [0.0, 600.0]
    assert again == [600.0, 0.0, 0.0]
    assert second_drill == [0.0, 600.0, 600.0]


def test_failures_are_blamed_where_they_happen(clip):
    """Raised inside the encoder's serving code: the variant's fault (a generic 500 to the
    client); a client's mistake raised there keeps its own 4xx and is not."""

    async def broken_forward(texts):
        raise RuntimeError("CUDA error: device-side assert")

    async def bad_image(image, timed=False):
        raise InvalidImageError("the image is truncated")

    clip._forward_texts = broken_forward
    with pytest.raises(ModelServingError) as caught:
        asyncio.run(clip.embed_texts(["a cat"]))
    assert is_variant_fault(caught.value) and caught.value.status == 500
    assert "RuntimeError" in caught.value.message

    clip._embed_image = bad_image
    with pytest.raises(InvalidImageError) as refused:
        asyncio.run(clip.embed_image(None))
    assert not is_variant_fault(refused.value)
    assert not is_variant_fault(UnicodeError("label empty or too long"))
    assert is_variant_fault(ReplicaStalledError("stalled"))


def test_the_ingress_sends_a_stalled_call_once_more():
    calls = []

    async def call():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("wrapped") from ReplicaStalledError("stalled")
        return "served elsewhere"

    assert asyncio.run(once_more_if_replica_lost(call)) == "served elsewhere"
    calls.clear()

    async def always_stalled():
        calls.append(1)
        raise ReplicaStalledError("stalled")

    with pytest.raises(ReplicaStalledError):
        asyncio.run(once_more_if_replica_lost(always_stalled))
    assert len(calls) == 2  # once more, not forever


def test_a_forward_that_ends_beside_a_parked_one_leaves_it_watched():
    """A bulk forward parked for interactive work (clipfleet/replicas/preempt.py) is still
    timed once the forward run in its stead has ended."""
    clock = [100.0]
    guard = serving.StallGuard("r", clock=lambda: clock[0])
    parked, release = threading.Event(), threading.Event()

    def bulk(items):
        parked.set()
        release.wait(5)
        return items

    thread = threading.Thread(target=guard.watch(bulk), args=([1],))
    thread.start()
    assert parked.wait(5)
    clock[0] = 101.0
    assert guard.watch(lambda items: items)([2]) == [2]  # the interactive one, ended
    clock[0] = 103.0
    assert guard.running_for() == 3.0  # the parked bulk forward's time, not 0
    release.set()
    thread.join(5)
    assert guard.running_for() == 0.0


def test_a_forward_parked_for_interactive_work_is_timed_only_while_it_runs():
    """With bulk turns in slices a bulk forward can spend far longer parked than its own
    compute takes: parked is waiting by design, not hung. Timed again from its resume."""
    clock = [100.0]
    guard = serving.StallGuard("r", clock=lambda: clock[0])
    first, second = Hold(), Hold()
    model = torch.nn.Sequential(first, torch.nn.Identity(), second)
    gate = PausableForward()
    forward = guard.watch(lambda items: [model(item) for item in items])

    async def scenario() -> list:
        running = asyncio.ensure_future(asyncio.to_thread(gate.run, forward, [torch.zeros(1)]))
        assert await asyncio.to_thread(first.inside.wait, 5)
        clock[0] = 101.0
        assert guard.running_for() == 1.0
        pausing = asyncio.ensure_future(gate.pause())
        await asyncio.sleep(0.01)
        first.go.set()  # it goes on to the Identity's call, and parks there
        assert await pausing
        clock[0] = 500.0  # long parked
        assert guard.running_for() == 0.0
        gate.resume()
        assert await asyncio.to_thread(second.inside.wait, 5)
        clock[0] = 502.0
        assert guard.running_for() == 2.0  # from its resume at 500
        second.go.set()
        return await running

    assert len(asyncio.run(scenario())) == 1
    assert guard.running_for() == 0.0
    assert guard.slowest_forward_s < 10  # what it ran (1 s, then 2 s and on), not 400 s parked


class Hold(torch.nn.Module):
    """A module call that waits for `go` (set `inside` once entered)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.go = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inside.set()
        assert self.go.wait(5)
        return x
