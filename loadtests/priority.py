"""Priority classes: interactive latency alone, and beside a saturating bulk load.

    python -m loadtests.priority [--seconds 30] [--config loadtests/bench_config.yaml]
                                 [--out results/priority.json]        # or: make bench-priority

Starts its own local Ray + Serve (the config's app, random weights, HTTP on a free loopback
port; default the bench config: one clip_fast replica, its cache off), then three phases of
`--seconds` each, every request a picture and caption never sent before:

1. alone: INTERACTIVE_CLIENTS closed-loop clients, one (image, caption) pair per POST /v1/score;
2. under bulk: the same, beside BULK_CLIENTS clients sending BULK_PAIRS pairs per request with
   `X-Clipfleet-Priority: bulk` (as `clipfleet score-csv` does), honouring Retry-After;
3. without classes: the same bulk load sent without the header (interactive, as every request
   was before priority classes): what the classes change.

Reports each phase's interactive p50/p95 and the bulk pairs served per second. The target
(issue 26): interactive p95 under bulk <= 1.5 x alone. Bounded in time and requests; loopback
only; needs no Ray cluster already running. On a shared machine, run it under
`flock /tmp/clipfleet-ray.lock` and say so beside the figures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from pathlib import Path

import aiohttp

from loadtests.overload import Fresh, image_pool, main, serving

ROOT = Path(__file__).resolve().parents[1]
INTERACTIVE_CLIENTS = 2
BULK_CLIENTS = 8
BULK_PAIRS = 16
HEADER = "X-Clipfleet-Priority"


def percentile(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100)[q - 1]


async def client(
    session: aiohttp.ClientSession,
    url: str,
    fresh: Fresh,
    pairs: int,
    headers: dict,
    deadline: float,
    answers: list,
) -> None:
    """Closed loop until `deadline`: (status, seconds, pairs) per answer; a 503 waits out its
    Retry-After (at most 10 s) and sends the same pairs again."""
    batch = [fresh.take() for _ in range(pairs)]
    while time.monotonic() < deadline:
        body = {"pairs": [{"image": {"base64": i}, "text": t} for i, t in batch]}
        started = time.monotonic()
        try:
            async with session.post(f"{url}/v1/score", json=body, headers=headers) as response:
                await response.read()
                answers.append((response.status, time.monotonic() - started, pairs))
                if response.status == 503:
                    await asyncio.sleep(min(float(response.headers.get("Retry-After", 1)), 10))
                    continue
        except (aiohttp.ClientError, TimeoutError):
            answers.append((0, time.monotonic() - started, pairs))
        batch = [fresh.take() for _ in range(pairs)]


async def phase(url: str, fresh: Fresh, seconds: float, bulk: dict | None) -> dict:
    """Interactive clients for `seconds`, beside bulk clients sending `bulk` headers (None:
    no bulk load)."""
    interactive: list = []
    bulk_answers: list = []
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=90)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [
            client(session, url, fresh, 1, {}, deadline, interactive)
            for _ in range(INTERACTIVE_CLIENTS)
        ]
        if bulk is not None:
            tasks += [
                client(session, url, fresh, BULK_PAIRS, bulk, deadline, bulk_answers)
                for _ in range(BULK_CLIENTS)
            ]
        await asyncio.gather(*tasks)
    ok = [seconds_ for status, seconds_, _ in interactive if status == 200]
    return {
        "interactive_statuses": dict(Counter(str(s) for s, _, _ in interactive)),
        "interactive_p50_s": round(statistics.median(ok), 3) if ok else None,
        "interactive_p95_s": round(percentile(ok, 95), 3) if ok else None,
        "bulk_statuses": dict(Counter(str(s) for s, _, _ in bulk_answers)),
        "bulk_pairs_per_s": round(
            sum(p for status, _, p in bulk_answers if status == 200) / seconds, 2
        ),
    }


async def encoder_cold_starts(url: str) -> dict[str, list[float]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/status") as response:
        encoders = (await response.json())["encoders"]
    return {
        name: [replica.get("cold_start_s") for replica in entry["replicas"]]
        for name, entry in encoders.items()
    }


def run(config: Path, seconds: float) -> dict:
    fresh = Fresh(image_pool())
    with serving(config) as url:
        asyncio.run(phase(url, fresh, 5, None))  # warm-up
        alone = asyncio.run(phase(url, fresh, seconds, None))
        under_bulk = asyncio.run(phase(url, fresh, seconds, {HEADER: "bulk"}))
        without_classes = asyncio.run(phase(url, fresh, seconds, {}))
        cold_starts = asyncio.run(encoder_cold_starts(url))
    ratio = None
    if alone["interactive_p95_s"] and under_bulk["interactive_p95_s"]:
        ratio = round(under_bulk["interactive_p95_s"] / alone["interactive_p95_s"], 2)
    return {
        "config": str(config),
        "seconds": seconds,
        "interactive_clients": INTERACTIVE_CLIENTS,
        "bulk_clients": BULK_CLIENTS,
        "bulk_pairs_per_request": BULK_PAIRS,
        "image_pool_wrapped": fresh.wrapped,
        "alone": alone,
        "under_bulk": under_bulk,
        "under_bulk_without_classes": without_classes,
        "p95_under_bulk_over_alone": ratio,
        # each encoder replica's constructor start -> ready (what a scaled-to-zero profile's
        # first request waits for, less the process's own start)
        "encoder_cold_start_s": cold_starts,
        "target_met": ratio is not None and ratio <= 1.5,
    }


if __name__ == "__main__":
    main(run, __doc__.splitlines()[0], ROOT / "loadtests" / "bench_config.yaml")
