"""Overload: does clipfleet admit only what it can serve within the deadline?

    python -m loadtests.overload [--seconds 30] [--config loadtests/bench_config.yaml]
                                 [--out results/overload.json]          # or: make overload

Starts its own local Ray + Serve (the config's app, random weights, HTTP on a free loopback
port), then runs POST /v1/score (one inline 640 x 480 image and a text) closed-loop; a client
that gets a 503 waits its Retry-After (at most 10 s) before the next request:

1. capacity: 32 clients (the throughput plateau on a 2-core machine, issue 14): throughput
   and latency percentiles;
2. overload: 8 x 32 = 256 clients for the same time: every answer's status and latency.

Criteria (issue 14, item 6): no 504; the admitted (200) requests' p99 <= 3 x the p99 at
capacity; everything else a 503 with Retry-After, answered at once (its p99 is reported).
Bounded in time and requests; loopback only. Needs no Ray cluster already running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from loadtests.images import make_image
from loadtests.wait_ready import wait_ready

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a photo of a cat", "a dog on a beach", "a red car", "a bowl of fruit"]
CAPACITY_CLIENTS = 32
# Inline images: an image server on this same loaded machine would fail fetches (502s) and
# measure itself rather than clipfleet. 8 distinct 640 x 480 pictures, encoder cache off.
IMAGES = [base64.b64encode(make_image(1 + 6 * i)[0]).decode() for i in range(8)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100)[98]


async def closed_loop(
    url: str, clients: int, seconds: float, probes: list[int] | None = None
) -> list[tuple]:
    """(status, seconds, has Retry-After) for every answer; errors as status 0. With `probes`,
    GET /readyz once a second meanwhile and note its statuses there."""
    results: list[tuple[int, float, bool]] = []
    deadline = time.monotonic() + seconds

    async def client(worker: int, session: aiohttp.ClientSession) -> None:
        n = worker
        while time.monotonic() < deadline:
            image = IMAGES[n % len(IMAGES)]
            body = {"pairs": [{"image": {"base64": image}, "text": TEXTS[n % len(TEXTS)]}]}
            started = time.monotonic()
            try:
                async with session.post(f"{url}/v1/score", json=body) as response:
                    await response.read()
                    retry = "Retry-After" in response.headers
                    results.append((response.status, time.monotonic() - started, retry))
                    if response.status == 503:
                        retry_after = float(response.headers.get("Retry-After", 1))
                        await asyncio.sleep(min(retry_after, 10))
            except (aiohttp.ClientError, TimeoutError):
                results.append((0, time.monotonic() - started, False))
            n += 7

    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:

        async def probe() -> None:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"{url}/readyz") as response:
                        probes.append(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    probes.append(0)
                await asyncio.sleep(1)

        extra = [probe()] if probes is not None else []
        await asyncio.gather(*(client(i, session) for i in range(clients)), *extra)
    return results


def summarise(results: list[tuple], clients: int, seconds: float) -> dict:
    statuses = Counter(status for status, _, _ in results)
    ok = [latency for status, latency, _ in results if status == 200]
    shed = [latency for status, latency, _ in results if status == 503]
    return {
        "clients": clients,
        "answers": len(results),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "throughput_ok_rps": round(len(ok) / seconds, 2),
        "ok_p50_s": round(statistics.median(ok), 3) if ok else None,
        "ok_p99_s": round(p99(ok), 3) if ok else None,
        "shed_p99_s": round(p99(shed), 3) if shed else None,
        "503_without_retry_after": sum(1 for s, _, r in results if s == 503 and not r),
    }


def start_app(config: Path, http_port: int) -> None:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load(config.read_text())
    document["http_options"] = {"host": "127.0.0.1", "port": http_port, "request_timeout_s": 60}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(document))


def run(config: Path, seconds: float) -> dict:
    import os

    os.environ["CLIPFLEET_RANDOM_WEIGHTS"] = "1"
    http_port = free_port()
    try:
        start_app(config, http_port)
        url = f"http://127.0.0.1:{http_port}"
        if wait_ready([f"{url}/readyz"], timeout_s=600, interval_s=2):
            raise RuntimeError(f"{url} not ready within 600 s")
        asyncio.run(closed_loop(url, CAPACITY_CLIENTS, 5))  # warm-up
        capacity = summarise(
            asyncio.run(closed_loop(url, CAPACITY_CLIENTS, seconds)),
            CAPACITY_CLIENTS,
            seconds,
        )
        clients = 8 * CAPACITY_CLIENTS
        probes: list[int] = []
        answers = asyncio.run(closed_loop(url, clients, seconds, probes))
        overload = summarise(answers, clients, seconds)
        overload["readyz_statuses"] = {str(k): v for k, v in sorted(Counter(probes).items())}
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    limit = 3 * capacity["ok_p99_s"] if capacity["ok_p99_s"] else None
    others = {k: v for k, v in overload["statuses"].items() if k not in ("200", "503")}
    return {
        "config": str(config),
        "seconds": seconds,
        "capacity": capacity,
        "overload": overload,
        "criteria": {
            "no_504": overload["statuses"].get("504", 0) == 0,
            "admitted_p99_within_3x_capacity_p99": bool(
                limit and overload["ok_p99_s"] and overload["ok_p99_s"] <= limit
            ),
            "every_non_200_is_503_with_retry_after": not others
            and overload["503_without_retry_after"] == 0,
            "readyz_stays_200": set(overload["readyz_statuses"]) == {"200"},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "loadtests" / "bench_config.yaml")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    report = run(options.config, options.seconds)
    text = json.dumps(report, indent=2)
    print(text)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text)


if __name__ == "__main__":
    main()
