"""A running bulk forward parks at a module call for interactive work (no Ray; real torch
modules, so the process-wide module hook is what parks it)."""

from __future__ import annotations

import asyncio
import threading
import time

import torch

from clipfleet.config import EncoderConfig
from clipfleet.ingress.priority import BULK, DEFAULT_BULK_SLICE_S, Classed
from clipfleet.models.sizing import ForwardLease
from clipfleet.replicas.batching import ForwardScheduler
from clipfleet.replicas.preempt import PausableForward


class Mark(torch.nn.Module):
    """Records `name` when called; with `gate`, then blocks until it is set."""

    def __init__(self, name: str, order: list, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.name, self.order, self.gate = name, order, gate
        self.entered = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.order.append(self.name)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5)
        return x


def models(order: list):
    """A bulk model that holds its thread in its first module until `go` is set, and the
    forwards of a scheduler whose image forward records what it ran."""
    go = threading.Event()
    started = Mark("bulk started", order, go)
    bulk_model = torch.nn.Sequential(started, Mark("bulk ended", order))

    def image(items: list) -> list:
        for item in items:
            if item == "bulk":
                bulk_model(torch.zeros(1))
            else:
                Mark(item, order)(torch.zeros(1))
        return items

    return image, go, started


async def run_beside_bulk(interactive: list[str], bulk_every: int, lease: ForwardLease | None):
    order: list = []
    image, go, started = models(order)
    forward = lease.wrap(image) if lease is not None else image
    scheduler = ForwardScheduler({"image": forward}, max_batch_size=1, bulk_every=bulk_every)
    bulk = asyncio.create_task(scheduler.run("image", [Classed("bulk", BULK)]))
    assert await asyncio.to_thread(started.entered.wait, 5)
    tasks = [asyncio.create_task(scheduler.run("image", [name])) for name in interactive]
    await asyncio.sleep(0.01)  # queued, and the bulk forward asked to park
    go.set()
    await asyncio.wait_for(asyncio.gather(bulk, *tasks), 5)
    return order, scheduler


async def test_interactive_work_runs_while_the_bulk_forward_running_is_parked(tmp_path):
    """Interactive work that comes during a bulk forward does not wait for its end; the
    parked forward's lease slot serves it (a one-slot lease would otherwise never free)."""
    order, scheduler = await run_beside_bulk(["i1"], 4, ForwardLease(1, tmp_path))
    assert order == ["bulk started", "i1", "bulk ended"]
    assert scheduler.forwards_by_class == {"interactive": 1, "bulk": 1}
    assert scheduler.parkings == 1


async def test_a_parked_bulk_forward_goes_on_after_bulk_every_minus_one_interactive_forwards():
    order, _ = await run_beside_bulk(["i1", "i2", "i3"], 3, None)
    # two interactive forwards while it is parked, then bulk's turn: it ends unpaused
    assert order == ["bulk started", "i1", "i2", "bulk ended", "i3"]


async def test_a_bulk_forward_is_not_parked_when_preemption_is_off():
    order: list = []
    image, go, started = models(order)
    scheduler = ForwardScheduler({"image": image}, max_batch_size=1)
    scheduler.bulk_preempt = False
    bulk = asyncio.create_task(scheduler.run("image", [Classed("bulk", BULK)]))
    assert await asyncio.to_thread(started.entered.wait, 5)
    interactive = asyncio.create_task(scheduler.run("image", ["i1"]))
    await asyncio.sleep(0.01)
    go.set()
    await asyncio.wait_for(asyncio.gather(bulk, interactive), 5)
    assert order == ["bulk started", "bulk ended", "i1"]


async def test_pausing_a_forward_that_ends_first_is_refused():
    gate = PausableForward()
    assert await asyncio.to_thread(gate.run, lambda items: items, [1]) == [1]
    assert await gate.pause() is False


async def test_a_bulk_forward_asked_to_park_goes_on_when_the_scheduler_is_cancelled():
    """Never a thread parked for good (it would hold the process's exit): a drain cancelled
    while it waits for the bulk forward to park lets it go on."""
    order: list = []
    image, go, started = models(order)
    scheduler = ForwardScheduler({"image": image}, max_batch_size=1)
    bulk = asyncio.create_task(scheduler.run("image", [Classed("bulk", BULK)]))
    assert await asyncio.to_thread(started.entered.wait, 5)
    interactive = asyncio.create_task(scheduler.run("image", ["i1"]))
    await asyncio.sleep(0.01)  # the bulk forward is asked to park at its next module call
    scheduler._worker.cancel()
    await asyncio.sleep(0.01)
    go.set()
    for _ in range(200):
        if "bulk ended" in order:
            break
        await asyncio.sleep(0.01)
    assert order == ["bulk started", "bulk ended"]
    bulk.cancel()
    interactive.cancel()


async def test_with_bulk_slice_s_a_parked_forward_whose_turn_came_can_be_parked_again():
    """bulk_every 2: one interactive forward per parking. Without a slice the forward's turn
    is its rest (i2 and i3 wait for its end); with bulk_slice_s 0 its turn is a slice, then
    interactive work parks it again (the forward still makes progress: a resumed forward runs
    one module call at least)."""

    async def order_with(slice_s: float | str | None) -> list:
        order: list = []
        go = threading.Event()
        started = Mark("bulk started", order, go)
        steps = [SlowMark(f"m{n}", order) for n in range(40)]
        bulk_model = torch.nn.Sequential(started, *steps, Mark("bulk ended", order))

        def image(items: list) -> list:
            for item in items:
                (bulk_model if item == "bulk" else Mark(item, order))(torch.zeros(1))
            return items

        scheduler = ForwardScheduler({"image": image}, max_batch_size=1, bulk_every=2)
        if slice_s != "default":
            scheduler.bulk_slice_s = slice_s
        bulk = asyncio.create_task(scheduler.run("image", [Classed("bulk", BULK)]))
        assert await asyncio.to_thread(started.entered.wait, 5)
        tasks = [asyncio.create_task(scheduler.run("image", [f"i{n}"])) for n in (1, 2, 3)]
        await asyncio.sleep(0.01)
        go.set()
        await asyncio.wait_for(asyncio.gather(bulk, *tasks), 10)
        assert scheduler.forwards_by_class == {"interactive": 3, "bulk": 1}
        return [name for name in order if not name.startswith("m")]

    assert await order_with(None) == ["bulk started", "i1", "bulk ended", "i2", "i3"]
    assert await order_with(0.0) == ["bulk started", "i1", "i2", "i3", "bulk ended"]
    # As shipped, a turn is a slice (30 ms) of the 400 ms forward, not its rest.
    assert await order_with("default") == ["bulk started", "i1", "i2", "i3", "bulk ended"]


def test_the_encoder_config_ships_the_schedulers_slice():
    assert EncoderConfig().bulk_slice_s == DEFAULT_BULK_SLICE_S is not None
    assert ForwardScheduler({}, max_batch_size=1).bulk_slice_s == DEFAULT_BULK_SLICE_S


class SlowMark(Mark):
    """A module call that takes a while (so a resumed forward is asked to park again long
    before it could reach its end)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.order.append(self.name)
        time.sleep(0.01)
        return x
