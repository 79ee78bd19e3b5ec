"""Generated test images (varied sizes and formats) and a loopback static server for them.

python -m loadtests.images --port 8089      # serves /img/<n>.<ext> until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import io

import numpy as np
from aiohttp import web
from PIL import Image

SIZES = [(320, 240), (640, 480), (1024, 768), (1920, 1080), (512, 512), (2048, 1365)]
FORMATS = [
    ("jpg", "JPEG", "image/jpeg"),
    ("png", "PNG", "image/png"),
    ("webp", "WEBP", "image/webp"),
]
COUNT = 64


def make_image(index: int) -> tuple[bytes, str, str]:
    """A smooth random picture (compresses like a photo, unlike pure noise)."""
    width, height = SIZES[index % len(SIZES)]
    ext, fmt, content_type = FORMATS[index % len(FORMATS)]
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, quality=90)
    return buffer.getvalue(), ext, content_type


def make_library(count: int = COUNT) -> dict[str, tuple[bytes, str]]:
    library = {}
    for index in range(count):
        data, ext, content_type = make_image(index)
        library[f"{index}.{ext}"] = (data, content_type)
    return library


async def start_server(host: str = "127.0.0.1", port: int = 0, count: int = COUNT):
    """Returns (runner, base_url, names)."""
    library = make_library(count)

    async def serve_image(request: web.Request) -> web.Response:
        data, content_type = library[request.match_info["name"]]
        return web.Response(body=data, content_type=content_type)

    app = web.Application()
    app.router.add_get("/img/{name}", serve_image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://{host}:{bound_port}", sorted(library)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args()

    async def run_forever() -> None:
        _, base_url, names = await start_server(port=args.port, count=args.count)
        print(f"serving {len(names)} images at {base_url}/img/<n>.<jpg|png|webp>", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run_forever())


if __name__ == "__main__":
    main()
