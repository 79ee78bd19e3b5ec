"""Images made by tests (nothing is downloaded), and a loopback image server."""

from __future__ import annotations

import base64
import io
import socket

import numpy as np
from PIL import Image


def image_bytes(width: int = 96, height: int = 72, fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def image_base64(**kwargs) -> str:
    return base64.b64encode(image_bytes(**kwargs)).decode()


def _reserve_ports(count: int) -> tuple[int, ...]:
    ports = set()
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.add(sock.getsockname()[1])
    return tuple(sorted(ports))


# The SSRF guard's fetch.allowed_ports (default 80, 443) refuses any other port, so the tests'
# loopback servers listen on ports picked once per test process, and the fetch configs that
# point at them (tests.support.local_dag.loopback_fetch) allow exactly these.
LOOPBACK_PORTS = _reserve_ports(8)
LOOPBACK_ALLOWED_PORTS = (80, 443, *LOOPBACK_PORTS)
_ports_in_use: set[int] = set()


def claim_loopback_port() -> int:
    """A port of LOOPBACK_PORTS that no server of this process holds (for a subprocess)."""
    for port in LOOPBACK_PORTS:
        if port not in _ports_in_use:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue  # taken by another process since it was picked
            _ports_in_use.add(port)
            return port
    raise RuntimeError(f"every loopback test port is in use: {LOOPBACK_PORTS}")


def release_loopback_port(port: int) -> None:
    _ports_in_use.discard(port)


async def start_loopback_site(app):
    """Serve an aiohttp app on 127.0.0.1, on one of LOOPBACK_PORTS: returns (runner, base_url)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    for port in LOOPBACK_PORTS:
        if port in _ports_in_use:
            continue
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError:
            continue  # taken by another process since it was picked
        _ports_in_use.add(port)
        return runner, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    raise RuntimeError(f"every loopback test port is in use: {LOOPBACK_PORTS}")


class LoopbackServer:
    """An aiohttp app of `build_app()` served on 127.0.0.1; `base_url` is set by `start()`."""

    def __init__(self) -> None:
        self.base_url = ""
        self._runner = None

    def build_app(self):
        raise NotImplementedError

    async def start(self) -> LoopbackServer:
        self._runner, self.base_url = await start_loopback_site(self.build_app())
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            release_loopback_port(int(self.base_url.rsplit(":", 1)[1]))


class ImageServer(LoopbackServer):
    """A loopback aiohttp server for fetch tests: /img.jpg (?seed=N: another picture), /big,
    /slow, /html, /missing, /loop."""

    def build_app(self):
        from aiohttp import web

        async def image(request):  # ?seed=N: another picture
            seed = request.query.get("seed")
            body = image_bytes() if seed is None else image_bytes(seed=int(seed))
            return web.Response(body=body, content_type="image/jpeg")

        async def big(request):
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await response.prepare(request)
            for _ in range(64):  # 4 MiB, with no Content-Length
                await response.write(b"\xff" * 65536)
            return response

        async def slow(request):
            import asyncio

            await asyncio.sleep(5)
            return web.Response(body=image_bytes(), content_type="image/jpeg")

        async def html(request):
            return web.Response(text="<html></html>", content_type="text/html")

        async def loop(request):
            raise web.HTTPFound("/loop")

        app = web.Application()
        app.router.add_get("/img.jpg", image)
        app.router.add_get("/big", big)
        app.router.add_get("/slow", slow)
        app.router.add_get("/html", html)
        app.router.add_get("/loop", loop)
        return app
