"""A failed item fails its request at once and cancels its siblings."""

from __future__ import annotations

import asyncio

import pytest

from clipfleet.errors import UpstreamError
from clipfleet.ingress.fanout import gather_items


def test_first_failure_cancels_the_siblings_and_names_its_item():
    cancelled = []

    async def slow(index: int) -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return index

    async def failing() -> int:
        await asyncio.sleep(0.01)
        raise UpstreamError("the image URL answered 500")

    async def scenario():
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError) as caught:
            await gather_items([slow(0), slow(1), failing(), slow(3)], "images")
        assert asyncio.get_running_loop().time() - started < 1.0
        return caught.value

    error = asyncio.run(scenario())
    assert error.param == "images[2]"
    assert sorted(cancelled) == [0, 1, 3]


def test_results_keep_their_order():
    async def value(index: int) -> int:
        await asyncio.sleep(0.01 * (3 - index))
        return index

    async def scenario():
        return await gather_items([value(i) for i in range(4)], "pairs")

    assert asyncio.run(scenario()) == [0, 1, 2, 3]
