"""An ASGI app served by uvicorn on a free 127.0.0.1 port, in a thread: for clients that need a
real socket (the openai SDK, the CLI) in unit tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from tests.support.servers import free_port


@contextlib.contextmanager
def serve_in_thread(app, start_timeout_s: float = 30) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:<port>) while the server runs."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
