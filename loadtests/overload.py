"""Overload: does clipfleet admit only what it can serve within the deadline?

    python -m loadtests.overload [--seconds 30] [--config serve_config.yaml]
                                 [--out results/overload.json]          # or: make overload

Starts its own local Ray + Serve (the config's app as shipped, default `make run`'s
serve_config.yaml, random weights, HTTP on a free loopback port), then runs POST /v1/score
(one inline 640 x 480 JPEG and a caption) closed-loop; a client that gets a 503 waits its
Retry-After (at most 10 s) before the next request:

1. capacity: 32 clients (the throughput plateau on a 2-core machine, issue 14): throughput
   and latency percentiles;
2. overload: 8 x 32 = 256 clients for the same time: every answer's status and latency.

Every request that was served carried a picture and caption never sent before, so the
embedding caches (on in the shipped config) do not turn the run into a cache benchmark: it
measures the models, as real traffic with new images does. 503s are counted by who shed them
(`X-Clipfleet-Shed: admission` is the ingress's admission; the rest is Serve's queues), and
each deployment's most RUNNING replicas are sampled (autoscaling during the run).

Criteria (issue 14, item 6; issue 23, item 5): no 504; the admitted (200) requests' p99 <= 3 x
the p99 at capacity; everything else a 503 with Retry-After (its p99 is reported). Bounded in
time and requests; loopback only. Needs no Ray cluster already running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import yaml
from PIL import Image

from loadtests.wait_ready import wait_ready

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a photo of a cat", "a dog on a beach", "a red car", "a bowl of fruit"]
CAPACITY_CLIENTS = 32
SHED_HEADER = "X-Clipfleet-Shed"
# Inline images: an image server on this same loaded machine would fail fetches (502s) and
# measure itself rather than clipfleet. Distinct 640 x 480 JPEGs, made before Ray starts.
POOL_SIZE = 2048


def image_pool(count: int = POOL_SIZE) -> list[str]:
    """`count` distinct smooth random 640 x 480 JPEGs, base64 (about 10 s)."""
    rng = np.random.default_rng(23)
    pool = []
    for _ in range(count):
        coarse = rng.integers(0, 255, (16, 21, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        pool.append(base64.b64encode(buffer.getvalue()).decode())
    return pool


class Fresh:
    """Hands out a never-sent (image, caption) per served request: a client keeps its pair
    until it is served (a shed request reached no model, so no cache)."""

    def __init__(self, images: list[str]) -> None:
        self.images = images
        self._next = itertools.count()
        self.wrapped = False

    def take(self) -> tuple[str, str]:
        n = next(self._next)
        self.wrapped = self.wrapped or n >= len(self.images)
        caption = f"{TEXTS[n % len(TEXTS)]}, picture {n}"
        return self.images[n % len(self.images)], caption


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
    url: str, clients: int, seconds: float, fresh: Fresh, probes: list[int] | None = None
) -> list[tuple]:
    """(status, seconds, has Retry-After, shed by) for every answer; errors as status 0. With
    `probes`, GET /readyz once a second meanwhile and note its statuses there."""
    results: list[tuple[int, float, bool, str]] = []
    deadline = time.monotonic() + seconds

    async def client(worker: int, session: aiohttp.ClientSession) -> None:
        image, text = fresh.take()
        while time.monotonic() < deadline:
            body = {"pairs": [{"image": {"base64": image}, "text": text}]}
            started = time.monotonic()
            try:
                async with session.post(f"{url}/v1/score", json=body) as response:
                    await response.read()
                    retry = "Retry-After" in response.headers
                    shed_by = response.headers.get(SHED_HEADER, "serve")
                    results.append((response.status, time.monotonic() - started, retry, shed_by))
                    if response.status == 503:
                        retry_after = float(response.headers.get("Retry-After", 1))
                        await asyncio.sleep(min(retry_after, 10))
                    else:
                        image, text = fresh.take()
            except (aiohttp.ClientError, TimeoutError):
                results.append((0, time.monotonic() - started, False, ""))

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
    statuses = Counter(status for status, *_ in results)
    ok = [latency for status, latency, *_ in results if status == 200]
    shed = [latency for status, latency, *_ in results if status == 503]
    return {
        "clients": clients,
        "answers": len(results),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "throughput_ok_rps": round(len(ok) / seconds, 2),
        "ok_p50_s": round(statistics.median(ok), 3) if ok else None,
        "ok_p99_s": round(p99(ok), 3) if ok else None,
        "shed_p99_s": round(p99(shed), 3) if shed else None,
        "503_by": dict(Counter(by for status, _, _, by in results if status == 503)),
        "503_without_retry_after": sum(1 for s, _, r, _ in results if s == 503 and not r),
    }


class ReplicaSampler:
    """The most RUNNING replicas each deployment had, sampled every 2 s from the controller."""

    def __init__(self) -> None:
        self.most: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ray import serve

        while not self._stop.wait(2.0):
            try:
                for app in serve.status().applications.values():
                    for name, state in app.deployments.items():
                        running = state.replica_states.get("RUNNING", 0)
                        self.most[name] = max(self.most[name], running)
            except Exception:  # the controller busy or going away: skip a sample
                pass

    def __enter__(self) -> ReplicaSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


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


@contextlib.contextmanager
def serving(config: Path) -> Iterator[str]:
    """The config's app on a local Ray + Serve with random weights, ready; its base URL. Ray is
    shut down after."""
    os.environ["CLIPFLEET_RANDOM_WEIGHTS"] = "1"
    http_port = free_port()
    try:
        start_app(config, http_port)
        url = f"http://127.0.0.1:{http_port}"
        if wait_ready([f"{url}/readyz"], timeout_s=600, interval_s=2):
            raise RuntimeError(f"{url} not ready within 600 s")
        yield url
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def run(config: Path, seconds: float) -> dict:
    fresh = Fresh(image_pool())
    with serving(config) as url:
        asyncio.run(closed_loop(url, CAPACITY_CLIENTS, 5, fresh))  # warm-up
        with ReplicaSampler() as at_capacity:
            answers = asyncio.run(closed_loop(url, CAPACITY_CLIENTS, seconds, fresh))
        capacity = summarise(answers, CAPACITY_CLIENTS, seconds)
        capacity["most_running_replicas"] = dict(sorted(at_capacity.most.items()))
        clients = 8 * CAPACITY_CLIENTS
        probes: list[int] = []
        with ReplicaSampler() as overloaded:
            answers = asyncio.run(closed_loop(url, clients, seconds, fresh, probes))
        overload = summarise(answers, clients, seconds)
        overload["readyz_statuses"] = {str(k): v for k, v in sorted(Counter(probes).items())}
        overload["most_running_replicas"] = dict(sorted(overloaded.most.items()))
    limit = 3 * capacity["ok_p99_s"] if capacity["ok_p99_s"] else None
    others = {k: v for k, v in overload["statuses"].items() if k not in ("200", "503")}
    return {
        "config": str(config),
        "seconds": seconds,
        "image_pool_wrapped": fresh.wrapped,  # True: some served pictures repeated
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


def main(
    run: Callable[[Path, float], dict] = run,
    description: str = __doc__.splitlines()[0],
    config: Path = ROOT / "serve_config.yaml",
) -> None:
    """--config, --seconds, --out: `run(config, seconds)`'s report, printed and written."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=config)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    emit(run(options.config, options.seconds), options.out)


def emit(report: dict, out: Path | None) -> None:
    """Print the report as JSON, and write it to `out` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
