"""Bounded closed-loop load on POST /v1/score: N clients for T seconds, images by URL.

    python loadtests/score_load.py --clients 32 --seconds 30 [--url http://127.0.0.1:8000]

Starts its own loopback image server (generated JPEGs), prints throughput and latency
percentiles. A benchmark tool, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

import aiohttp
import numpy as np
from aiohttp import web
from PIL import Image


def jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def start_image_server(count: int) -> tuple[web.AppRunner, str]:
    images = [jpeg(640, 480, seed) for seed in range(count)]

    async def serve_image(request: web.Request) -> web.Response:
        return web.Response(
            body=images[int(request.match_info["n"]) % count], content_type="image/jpeg"
        )

    app = web.Application()
    app.router.add_get("/img/{n}.jpg", serve_image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def client(session, url, image_base, deadline, latencies, errors, worker):
    n = worker
    while time.monotonic() < deadline:
        body = {"pairs": [{"image": {"url": f"{image_base}/img/{n}.jpg"}, "text": "a photo"}]}
        started = time.monotonic()
        async with session.post(f"{url}/v1/score", json=body) as response:
            await response.read()
            if response.status == 200:
                latencies.append(time.monotonic() - started)
            else:
                errors.append(response.status)
        n += 17


async def run(url: str, clients: int, seconds: float, warmup: float) -> dict:
    runner, image_base = await start_image_server(256)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        if warmup:
            await asyncio.gather(
                *(
                    client(session, url, image_base, time.monotonic() + warmup, [], [], i)
                    for i in range(clients)
                )
            )
        latencies: list[float] = []
        errors: list[int] = []
        started = time.monotonic()
        await asyncio.gather(
            *(
                client(session, url, image_base, started + seconds, latencies, errors, i)
                for i in range(clients)
            )
        )
        elapsed = time.monotonic() - started
    await runner.cleanup()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": quantiles[49] * 1000,
        "p95_ms": quantiles[94] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.clients, args.seconds, args.warmup))
    print(
        " ".join(
            f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
            for key, value in result.items()
        )
    )


if __name__ == "__main__":
    main()
