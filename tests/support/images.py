"""Images made by tests (nothing is downloaded), and a loopback image server."""

from __future__ import annotations

import base64
import io

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


async def start_loopback_site(app):
    """Serve an aiohttp app on 127.0.0.1 (a free port): returns (runner, base_url)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


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


class ImageServer(LoopbackServer):
    """A loopback aiohttp server for fetch tests: /img.jpg, /big, /slow, /html, /missing, /loop."""

    def build_app(self):
        from aiohttp import web

        async def image(request):
            return web.Response(body=image_bytes(), content_type="image/jpeg")

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
