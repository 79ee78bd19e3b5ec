"""Helpers for driving the encoder core (clipfleet/replicas/core.py) without Ray."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from clipfleet.models.clip import load_clip_model
from clipfleet.replicas.core import DirectQueue
from clipfleet.replicas.multiplexed import REQUESTED_MODEL
from tests.support.fidelity import CPU


class Batched:
    """Stands in for a shell's @serve.batch method: records the sizes reconfigure sets."""

    def __init__(self) -> None:
        self.sizes: list[tuple[str, float]] = []

    def set_max_batch_size(self, size: int) -> None:
        self.sizes.append(("max_batch_size", size))

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        self.sizes.append(("batch_wait_timeout_s", seconds))


class RecordingQueue(DirectQueue):
    """The core's DirectQueue, recording the kind of every item handed to it, with one
    resizable stand-in (`batched`)."""

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self.kinds: list[str] = []
        self.batched = Batched()

    def resizable(self) -> list:
        return [self.batched]

    async def image(self, pixels):
        self.kinds.append("image")
        return await super().image(pixels)

    async def text(self, tokens):
        self.kinds.append("text")
        return await super().text(tokens)


class GatedForwards:
    """A multiplexed encoder's `load` whose models' text forwards record (model id, batch
    size) and block until `open()`: work queued meanwhile merges behind the first forward."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []
        self._gate = threading.Event()

    def open(self) -> None:
        self._gate.set()

    def __call__(self, resolved: Any) -> Any:
        model = load_clip_model(resolved.spec, CPU, False)
        encode = model.encode_tokens

        def gated(tokens: list) -> Any:
            self._gate.wait(30)
            self.batches.append((resolved.model_id, len(tokens)))
            return encode(tokens)

        model.encode_tokens = gated
        return model

    def items(self, model_id: str) -> list[int]:
        return [size for owner, size in self.batches if owner == model_id]


async def as_model(model_id: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """`call()` as a request for `model_id` (what Serve's multiplexed_model_id carries)."""
    REQUESTED_MODEL.set(model_id)  # in this task's own context
    return await call()


async def queued_behind_a_forward(
    encoder: Any, gates: GatedForwards, calls: list[Awaitable[Any]]
) -> list[Any]:
    """Start `calls`, open the gate once all but the first forward's items wait in the
    scheduler, and return their results."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    for _ in range(1000):
        if sum(encoder.scheduler.pending().values()) >= len(tasks) - 1:
            break
        await asyncio.sleep(0.01)
    gates.open()
    return await asyncio.gather(*tasks)
