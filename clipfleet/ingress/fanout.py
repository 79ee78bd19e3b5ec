"""Per-item fan-out of one request: the items run concurrently and fail together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from clipfleet.errors import ReplicaStalledError, find_clipfleet_error

logger = logging.getLogger("ray.serve")


def raise_for(exc: BaseException, param: str) -> NoReturn:
    """Re-raise `exc`, pointing a client-facing error at the request field that caused it."""
    error = find_clipfleet_error(exc)
    if error is not None:
        raise error.at_param(param) from exc
    raise exc


async def gather_items(
    responses: Sequence[Awaitable], field: str, params: Sequence[str] | None = None
) -> list:
    """Await per-item responses. The first failure cancels the other items (and with them
    their deployment calls) and is re-raised naming its item: `params[i]` where the items came
    from fields of their own, else `field[i]` (`images[2]`)."""
    results: list[Any] = [None] * len(responses)
    failures: list[tuple[int, Exception]] = []

    async def one(index: int, response: Awaitable) -> None:
        try:
            results[index] = await response
        except Exception as exc:
            failures.append((index, exc))
            raise

    try:
        async with asyncio.TaskGroup() as group:
            for index, response in enumerate(responses):
                group.create_task(one(index, response))
    except BaseExceptionGroup:
        if not failures:
            raise
        index, exc = failures[0]
        raise_for(exc, params[index] if params is not None else f"{field}[{index}]")
    return results


@dataclass
class Judged:
    """What the canary guard judges a request's latency on: the encoder-reported seconds
    (queue + preprocess + forward) when the operation knows them, never the image download."""

    encoder_s: float | None = None

    def add(self, seconds: float) -> None:
        self.encoder_s = max(self.encoder_s or 0.0, seconds)


def replica_lost(exc: BaseException) -> bool:
    """The replica serving a call died, became unreachable, or stalled and is being replaced
    (not: the call failed)."""
    if isinstance(find_clipfleet_error(exc), ReplicaStalledError):
        return True
    try:
        from ray.exceptions import ActorUnavailableError, RayActorError
    except ImportError:  # pragma: no cover - Ray is a dependency
        return False
    return isinstance(exc, RayActorError | ActorUnavailableError)


async def once_more_if_replica_lost(call: Callable[[], Awaitable]) -> Any:
    """Inference is idempotent: a call whose replica died or stalled is sent again, once (Serve
    routes it to a live replica), so losing a replica costs its in-flight requests time, not an
    error."""
    try:
        return await call()
    except Exception as exc:
        if not replica_lost(exc):
            raise
        logger.warning("a replica was lost mid-call (%s); sending the call again", type(exc))
        return await call()
