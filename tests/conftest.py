"""Shared fixtures: tiny random-init models written to disk once per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# int8 ranges cached per session, never in the user's ~/.cache (clipfleet/models/embedding_space.py)
os.environ.setdefault("CLIPFLEET_CALIBRATION_CACHE", tempfile.mkdtemp(prefix="clipfleet-calib-"))
# Single-node Ray in tests binds its node address to loopback (127.0.0.1), never to the host's
# interface address: tests may only talk to loopback. (The multi-node test sets this back to 1
# for its own `ray start` processes and gives them loopback addresses 127.0.0.2 / 127.0.0.3.)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from tests.support.tiny_models import make_hf_clip_dir, make_open_clip_dir, make_resnet_file

    folder = tmp_path_factory.mktemp("models")
    make_open_clip_dir(folder / "open_clip")
    make_hf_clip_dir(folder / "hf_clip")
    make_resnet_file(folder / "resnet18.pt")
    return folder


@pytest.fixture(scope="session")
def tiny_args(model_dir):
    from tests.support.local_dag import tiny_app_args

    return tiny_app_args(model_dir)


@pytest.fixture(scope="module")
def hostile():
    """The generated hostile-image corpus, served on 127.0.0.1."""
    from tests.support.hostile import HostileServer
    from tests.support.servers import ThreadedImageServer

    server = HostileServer()
    thread = ThreadedImageServer(server).start()
    yield server
    thread.stop()


@pytest.fixture(scope="session")
def image_server():
    """The test images (tests/support/servers.py), served on 127.0.0.1 for the whole session."""
    from tests.support.servers import ThreadedImageServer

    server = ThreadedImageServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def image_url(image_server):
    """An image URL every tier's tests may fetch."""
    return f"{image_server.base_url}/img.jpg"
