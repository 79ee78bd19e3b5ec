"""A bounded closed-loop HTTP load generator: N clients, T seconds, latency percentiles."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable

import aiohttp


async def _client(session, url, make_body, deadline, latencies, errors, worker) -> None:
    """`errors` counts failures by what they were: an HTTP status and the envelope's error
    type (`503 service_unavailable`), or the client-side exception's name."""
    n = worker
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            async with session.post(url, json=make_body(n)) as response:
                body = await response.read()
                failure = None if response.status == 200 else _failure(response.status, body)
        except (aiohttp.ClientError, TimeoutError) as exc:  # a timed-out request is a failed one
            failure = type(exc).__name__
        if failure is None:
            latencies.append(time.monotonic() - started)
        else:
            errors[failure] += 1
        n += 7


def _failure(status: int, body: bytes) -> str:
    try:
        return f"{status} {json.loads(body)['error']['type']}"
    except (ValueError, KeyError, TypeError):
        return str(status)


async def run_load(
    url: str,
    make_body: Callable[[int], dict],
    clients: int,
    seconds: float,
    warmup_s: float = 0,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> dict:
    """`clients` closed-loop clients for `warmup_s` (not counted), then for `seconds`. The
    measured window runs from `on_start` (called as it opens) until the last request sent in it
    has finished (`on_end`); `client_cpu_s` is this process's CPU time in that window."""
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if warmup_s:
            deadline = time.monotonic() + warmup_s
            await asyncio.gather(
                *(
                    _client(session, url, make_body, deadline, [], Counter(), i)
                    for i in range(clients)
                )
            )
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        if on_start:
            on_start()
        client_cpu = time.process_time()
        started = time.monotonic()
        await asyncio.gather(
            *(
                _client(session, url, make_body, started + seconds, latencies, errors, i)
                for i in range(clients)
            )
        )
        elapsed = time.monotonic() - started
        client_cpu = time.process_time() - client_cpu
        if on_end:
            on_end()
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "throughput_rps": len(latencies) / elapsed,
        "elapsed_s": elapsed,
        "client_cpu_s": client_cpu,
        "p50_ms": cuts[49] * 1000,
        "p95_ms": cuts[94] * 1000,
        "p99_ms": cuts[98] * 1000,
    }
