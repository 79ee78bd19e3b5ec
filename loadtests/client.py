"""A bounded closed-loop HTTP load generator: N clients, T seconds, latency percentiles."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import aiohttp


async def _client(session, url, make_body, deadline, latencies, errors, worker) -> None:
    n = worker
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            async with session.post(url, json=make_body(n)) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):  # a timed-out request is a failed one
            ok = False
        (latencies.append(time.monotonic() - started) if ok else errors.append(1))
        n += 7


async def run_load(
    url: str, make_body: Callable[[int], dict], clients: int, seconds: float, warmup_s: float = 0
) -> dict:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if warmup_s:
            deadline = time.monotonic() + warmup_s
            await asyncio.gather(
                *(_client(session, url, make_body, deadline, [], [], i) for i in range(clients))
            )
        latencies: list[float] = []
        errors: list[int] = []
        started = time.monotonic()
        await asyncio.gather(
            *(
                _client(session, url, make_body, started + seconds, latencies, errors, i)
                for i in range(clients)
            )
        )
        elapsed = time.monotonic() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p95_ms": cuts[94] * 1000,
        "p99_ms": cuts[98] * 1000,
    }
