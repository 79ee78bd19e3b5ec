"""`make loadtest` waits (bounded) for the image server and the service instead of sleeping."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

from loadtests.wait_ready import main, wait_ready
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[3]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_waits_for_a_server_that_starts_late():
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ok)

    def start_late() -> None:
        time.sleep(0.6)
        server.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    # the socket is bound but not served for 0.6 s: connections queue or fail until then
    started = time.monotonic()
    try:
        assert wait_ready([f"http://127.0.0.1:{port}/"], timeout_s=10) == []
        assert time.monotonic() - started < 9
    finally:
        server.shutdown()
        server.server_close()


def test_gives_up_at_the_deadline_and_names_what_is_missing(capsys):
    url = f"http://127.0.0.1:{free_port()}/readyz"  # nothing listens there
    started = time.monotonic()
    assert main([url, "--timeout", "0.5"]) == 1
    assert time.monotonic() - started < 5
    assert url in capsys.readouterr().err


def test_the_makefile_waits_instead_of_sleeping():
    makefile = (ROOT / "Makefile").read_text()
    block = makefile.split("WITH_IMAGE_SERVER =", 1)[1].split("\n\n", 1)[0]
    assert "loadtests.wait_ready" in block and "sleep" not in block
