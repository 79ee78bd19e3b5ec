"""ForwardScheduler: one forward at a time, merging what queued behind it (no Ray)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from clipfleet.ingress.priority import BULK, INTERACTIVE, Classed
from clipfleet.replicas import batching
from clipfleet.replicas.batching import ForwardScheduler


class GatedForward:
    """A forward that records its batches and, while `gate` is clear, blocks like a slow model."""

    def __init__(self, kind: str, calls: list) -> None:
        self.kind, self.calls = kind, calls
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __call__(self, items: list) -> list:
        self.entered.set()
        self.gate.wait(5)
        self.calls.append((self.kind, list(items)))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        return [f"{self.kind}:{item}" for item in items]


def make(max_batch_size: int = 16):
    calls: list = []
    image, text = GatedForward("image", calls), GatedForward("text", calls)
    sizes: list = []
    scheduler = ForwardScheduler(
        {"image": image, "text": text},
        max_batch_size,
        on_batch=lambda kind, size, seconds: sizes.append((kind, size)),
    )
    return scheduler, image, text, calls, sizes


async def occupy(scheduler: ForwardScheduler, image: GatedForward) -> asyncio.Task:
    """Start a one-item image forward that holds the model until `image.gate` is set."""
    image.gate.clear()
    blocker = asyncio.create_task(scheduler.run("image", ["b"]))
    await until_busy(image)
    return blocker


async def until_busy(forward: GatedForward) -> None:
    """Wait until the scheduler's worker thread is inside the (gated) forward."""
    assert await asyncio.to_thread(forward.entered.wait, 5), "the forward never started"


async def test_work_that_queues_behind_a_forward_runs_as_one_batch():
    scheduler, image, _, _calls, sizes = make()
    image.gate.clear()
    first = asyncio.create_task(scheduler.run("image", [0]))
    await until_busy(image)
    rest = [asyncio.create_task(scheduler.run("image", [n, n + 100])) for n in range(1, 6)]
    await asyncio.sleep(0.01)
    assert scheduler.pending() == {"image": 10, "text": 0}
    image.gate.set()
    assert await first == ["image:0"]
    assert [await task for task in rest] == [
        [f"image:{n}", f"image:{n + 100}"] for n in range(1, 6)
    ]
    assert sizes == [("image", 1), ("image", 10)]


async def test_batches_never_exceed_max_batch_size():
    scheduler, image, _, _calls, sizes = make(max_batch_size=4)
    blocker = await occupy(scheduler, image)
    waiting = asyncio.create_task(scheduler.run("image", list(range(10))))
    await asyncio.sleep(0.01)
    image.gate.set()
    await blocker
    assert await waiting == [f"image:{n}" for n in range(10)]
    assert [size for _, size in sizes] == [1, 4, 4, 2]


async def test_the_kind_that_waited_longest_runs_next():
    scheduler, image, _text, calls, _ = make()
    blocker = await occupy(scheduler, image)
    queued_text = asyncio.create_task(scheduler.run("text", ["t"]))
    await asyncio.sleep(0.01)
    queued_image = asyncio.create_task(scheduler.run("image", ["i"]))
    await asyncio.sleep(0.01)
    image.gate.set()
    await asyncio.gather(blocker, queued_text, queued_image)
    assert [kind for kind, _ in calls] == ["image", "text", "image"]


async def test_a_kind_that_just_ran_lets_the_other_go_next():
    """64 texts queued first, then one image: the image waits one text batch, not four."""
    scheduler, image, _text, calls, _ = make(max_batch_size=16)
    blocker = await occupy(scheduler, image)
    texts = asyncio.create_task(scheduler.run("text", [f"t{n}" for n in range(64)]))
    await asyncio.sleep(0.01)
    late_image = asyncio.create_task(scheduler.run("image", ["i"]))
    await asyncio.sleep(0.01)
    image.gate.set()
    await asyncio.gather(blocker, texts, late_image)
    assert [(kind, len(items)) for kind, items in calls] == [
        ("image", 1),
        ("text", 16),
        ("image", 1),
        *[("text", 16)] * 3,
    ]


async def test_a_failed_forward_fails_only_its_own_batch():
    scheduler, image, _, _calls, _ = make(max_batch_size=2)
    image.fail_next = True
    image.gate.clear()
    failing = asyncio.create_task(scheduler.run("image", [1, 2]))
    await until_busy(image)
    later = asyncio.create_task(scheduler.run("image", [3]))
    await asyncio.sleep(0.01)
    image.gate.set()
    with pytest.raises(RuntimeError, match="model exploded"):
        await failing
    assert await later == ["image:3"]


async def test_callers_that_went_away_are_not_run():
    scheduler, image, _, calls, _ = make()
    blocker = await occupy(scheduler, image)
    abandoned = asyncio.create_task(scheduler.run("image", ["gone"]))
    kept = asyncio.create_task(scheduler.run("image", ["kept"]))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    await asyncio.sleep(0)
    image.gate.set()
    await blocker
    assert await kept == ["image:kept"]
    assert calls[-1] == ("image", ["kept"])


async def test_a_forward_with_the_wrong_number_of_results_is_an_error():
    scheduler = ForwardScheduler({"image": lambda items: items[:-1]}, 8)
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        await scheduler.run("image", ["a", "b"])


def test_max_batch_size_must_be_positive():
    scheduler, *_ = make()
    scheduler.max_batch_size = 3
    assert scheduler.max_batch_size == 3
    with pytest.raises(ValueError):
        scheduler.max_batch_size = 0


async def test_a_failing_on_batch_callback_does_not_stall_the_queue():
    def broken(kind, size, seconds):
        raise ValueError("metrics backend down")

    scheduler = ForwardScheduler({"image": lambda items: items}, 8, on_batch=broken)
    assert await scheduler.run("image", ["a"]) == ["a"]
    assert await scheduler.run("image", ["b", "c"]) == ["b", "c"]


async def queue_behind_blocker(scheduler, image, work: list[tuple[str, str]]) -> list:
    """Hold the model, queue `work` ((priority, item) pairs, in that order), release; the
    items in the order their forwards ran (the blocker's first)."""
    blocker = await occupy(scheduler, image)
    tasks = []
    for priority, item in work:
        tasks.append(asyncio.create_task(scheduler.run("image", [Classed(item, priority)])))
        await asyncio.sleep(0.001)  # queued in this order
    image.gate.set()
    await asyncio.gather(blocker, *tasks)
    return [item for _, items in image.calls for item in items]


async def test_interactive_work_runs_before_bulk_work_that_queued_earlier():
    scheduler, image, _, _calls, _ = make(max_batch_size=1)
    work = [(BULK, "b1"), (BULK, "b2"), (INTERACTIVE, "i1"), (INTERACTIVE, "i2")]
    order = await queue_behind_blocker(scheduler, image, work)
    assert order[:3] == ["b", "i1", "i2"]
    assert scheduler.forwards_by_class == {INTERACTIVE: 3, BULK: 2}


async def test_bulk_keeps_one_forward_in_bulk_every_under_a_stream_of_interactive_work():
    scheduler, image, _, _calls, _ = make(max_batch_size=1)
    scheduler.bulk_every = 3
    work = [(BULK, "b1"), (BULK, "b2")] + [(INTERACTIVE, f"i{n}") for n in range(1, 8)]
    order = await queue_behind_blocker(scheduler, image, work)
    # two interactive forwards while bulk waits, then one bulk: bulk never starves
    assert order == ["b", "i1", "i2", "b1", "i3", "i4", "b2", "i5", "i6", "i7"]


async def test_untagged_items_are_interactive_and_classes_never_share_a_forward():
    scheduler, image, _, _calls, _ = make()
    blocker = await occupy(scheduler, image)
    bulk = asyncio.create_task(scheduler.run("image", [Classed("x", BULK), Classed("y", BULK)]))
    plain = asyncio.create_task(scheduler.run("image", ["p", "q"]))
    await asyncio.sleep(0.01)
    assert scheduler.pending_by_class() == {INTERACTIVE: 2, BULK: 2}
    image.gate.set()
    await asyncio.gather(blocker, bulk, plain)
    assert await bulk == ["image:x", "image:y"]
    assert [items for _, items in image.calls] == [["b"], ["p", "q"], ["x", "y"]]


async def test_a_bulk_forward_holds_at_most_bulk_max_batch_size_items():
    """What an interactive request can wait behind: one bulk forward of at most 2 items."""
    scheduler, image, _, _calls, _ = make(max_batch_size=8)
    scheduler.bulk_max_batch_size = 2
    blocker = await occupy(scheduler, image)
    bulk = asyncio.create_task(scheduler.run("image", [Classed(n, BULK) for n in range(5)]))
    plain = asyncio.create_task(scheduler.run("image", ["p", "q", "r"]))
    await asyncio.sleep(0.01)
    image.gate.set()
    await asyncio.gather(blocker, bulk, plain)
    assert [items for _, items in image.calls] == [["b"], ["p", "q", "r"], [0, 1], [2, 3], [4]]


async def bulk_batches(scheduler: ForwardScheduler, image: GatedForward) -> list:
    """The forwards of 5 bulk items queued behind a one-item bulk forward (nothing
    interactive queued), the first one included."""
    image.calls.clear()
    image.gate.clear()
    image.entered.clear()
    first = asyncio.create_task(scheduler.run("image", [Classed("first", BULK)]))
    await until_busy(image)
    rest = asyncio.create_task(scheduler.run("image", [Classed(n, BULK) for n in range(5)]))
    await asyncio.sleep(0.01)
    image.gate.set()
    await asyncio.gather(first, rest)
    return [items for _, items in image.calls]


async def test_bulk_forwards_are_bounded_only_while_interactive_work_is_about(monkeypatch):
    """A bulk job alone runs full batches; interactive work within the window bounds them."""
    monkeypatch.setattr(batching, "INTERACTIVE_WINDOW_S", 0.3)
    scheduler, image, _, _calls, _ = make(max_batch_size=8)
    scheduler.bulk_max_batch_size = 2
    assert not scheduler.interactive_about()
    assert await bulk_batches(scheduler, image) == [["first"], [0, 1, 2, 3, 4]]
    await scheduler.run("image", ["interactive"])
    assert scheduler.interactive_about()
    assert await bulk_batches(scheduler, image) == [["first"], [0, 1], [2, 3], [4]]
    await asyncio.sleep(0.35)
    assert not scheduler.interactive_about()
    assert await bulk_batches(scheduler, image) == [["first"], [0, 1, 2, 3, 4]]


def test_bulk_every_must_leave_interactive_first():
    scheduler, *_ = make()
    with pytest.raises(ValueError, match="at least 2"):
        scheduler.bulk_every = 1
