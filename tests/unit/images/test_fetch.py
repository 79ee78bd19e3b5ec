"""UrlFetcher against a loopback server: success and every upstream failure's status."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver

from clipfleet.errors import ClipfleetError, InvalidRequestError, InvalidUrlError
from clipfleet.images.fetch import CONNECTIONS_PER_HOST, ImageSource, UrlFetcher
from tests.support.images import ImageServer, LoopbackServer, image_base64, image_bytes
from tests.support.local_dag import loopback_fetch

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def server():
    started = await ImageServer().start()
    yield started
    await started.stop()


@pytest.fixture
async def fetcher():
    limits = loopback_fetch(timeout_s=1.0, max_bytes=1024 * 1024, max_redirects=2)
    instance = UrlFetcher(limits)
    yield instance
    await instance.close()


async def test_fetches_and_decodes(server, fetcher):
    pixels = await fetcher.load(ImageSource(url=f"{server.base_url}/img.jpg"))
    assert pixels.shape == (72, 96, 3)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/missing", 502), ("/slow", 504), ("/big", 413), ("/html", 415), ("/loop", 502)],
)
async def test_upstream_failures_map_to_statuses(server, fetcher, path, status):
    with pytest.raises(ClipfleetError) as caught:
        await fetcher.load(ImageSource(url=server.base_url + path))
    assert caught.value.status == status, caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "not a url",
        "http://a..b/x.jpg",  # each of these raised UnicodeError inside name resolution
        "http://xn--/x.jpg",
        f"http://{'a' * 64}.example/x.jpg",
        "http://xn--zz.example/x.jpg",
        "http://exa%20mple.example/x.jpg",
        "http://-lead.example/x.jpg",
        "http://a.b:99999/x.jpg",
    ],
)
async def test_only_well_formed_http_urls_before_any_lookup(url):
    error, lookups = await refusal_and_lookups(url)
    assert isinstance(error, InvalidUrlError) and (error.status, error.type) == (400, "invalid_url")
    assert lookups == []


@pytest.mark.parametrize(
    "url", ["http://xn--fa-hia.example/x.jpg", "http://faß.example/x.jpg", "http://a_b.example/"]
)
async def test_valid_internationalised_and_underscored_hosts_are_looked_up(url):
    error, lookups = await refusal_and_lookups(url)
    assert error.status == 502 and len(lookups) == 1


async def refusal_and_lookups(url: str) -> tuple[ClipfleetError, list[str]]:
    """The error fetching `url` gives, and the host names looked up meanwhile (none answer)."""
    resolver = NoDns()
    fetcher = UrlFetcher(loopback_fetch(), resolver=resolver)
    try:
        with pytest.raises(ClipfleetError) as caught:
            await fetcher.load(ImageSource(url=url))
    finally:
        await fetcher.close()
    return caught.value, resolver.calls


class NoDns(AbstractResolver):
    """Records lookups and answers none (no network in tests)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.calls.append(host)
        raise OSError(f"{host}: no DNS here")

    async def close(self):
        pass


async def test_base64_and_raw_bytes(fetcher):
    assert (await fetcher.load(ImageSource(base64=image_base64()))).shape == (72, 96, 3)
    data_url = "data:image/jpeg;base64," + image_base64()
    assert (await fetcher.load(ImageSource(base64=data_url))).shape == (72, 96, 3)
    assert (await fetcher.load(ImageSource(data=image_bytes()))).shape == (72, 96, 3)
    with pytest.raises(InvalidRequestError):
        await fetcher.load(ImageSource(base64="not base64!"))


def test_exactly_one_source():
    with pytest.raises(InvalidRequestError):
        ImageSource()
    with pytest.raises(InvalidRequestError):
        ImageSource(url="http://a/b.jpg", data=b"x")


class CountingServer(LoopbackServer):
    """Holds each /img.jpg request until `full` are in flight (or 10 s passed), and records the
    most it had in flight at once."""

    def __init__(self, full: int) -> None:
        super().__init__()
        self.full = full
        self.in_flight = self.peak = 0

    def build_app(self):
        from aiohttp import web

        released = asyncio.Event()

        async def image(request):
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                if self.in_flight >= self.full:
                    released.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released.wait(), 10)
                await asyncio.sleep(0.05)  # the rest arrive now, if nothing holds them back
                return web.Response(body=image_bytes(), content_type="image/jpeg")
            finally:
                self.in_flight -= 1

        app = web.Application()
        app.router.add_get("/img.jpg", image)
        return app


async def test_connections_to_one_host_are_capped():
    limits = loopback_fetch(timeout_s=60.0)  # waiting for a connection counts against it
    assert limits.connection_limit > CONNECTIONS_PER_HOST  # the per-host cap is what binds
    fetcher = UrlFetcher(limits)
    server = await CountingServer(full=CONNECTIONS_PER_HOST).start()
    try:
        url = f"{server.base_url}/img.jpg"
        sources = [ImageSource(url=url) for _ in range(3 * CONNECTIONS_PER_HOST)]
        await asyncio.gather(*(fetcher.read_bytes(source) for source in sources))
    finally:
        await server.stop()
        await fetcher.close()
    assert server.peak == CONNECTIONS_PER_HOST


def test_the_fetcher_deployment_does_not_import_torch():
    """The ImageFetcher runs no model: its process must not load torch (~800 MiB of RSS). A
    fresh interpreter imports its deployment module (what its Ray worker imports)."""
    probe = (
        "import sys, deployments.image_fetcher, clipfleet.replicas.fetcher\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
