"""Loopback servers run in a background thread, for tests whose client side is synchronous."""

from __future__ import annotations

import asyncio
import socket
import threading

from tests.support.images import ImageServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedImageServer:
    """ImageServer on its own event loop thread; `base_url` is set once `start()` returns."""

    def __init__(self, server=None) -> None:
        """`server`: anything with async start()/stop() and base_url (default ImageServer)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = server if server is not None else ImageServer()

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def start(self) -> ThreadedImageServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
