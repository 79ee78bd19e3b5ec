"""One real local Ray + Serve for the integration tier.

Apps are deployed the way `serve deploy serve_config.yaml` does it (a ServeDeploySchema config
sent to the controller), so the same path serves live reconfiguration tests.
"""

from __future__ import annotations

import pytest

from tests.support.serve_apps import APP_NAME, ServeApps, wait_ready
from tests.support.servers import free_port


@pytest.fixture(scope="session")
def serve_apps():
    import ray
    from ray import serve

    # No dashboard: the per-node metrics agent still exports app and Serve metrics.
    metrics_port = free_port()
    ray.init(
        num_cpus=8, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield ServeApps(f"http://127.0.0.1:{port}", port, metrics_port)
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def app_url(serve_apps, tiny_args):
    serve_apps.apply(APP_NAME, "/", tiny_args)
    wait_ready(serve_apps.url("/"))
    return serve_apps.url("/")


@pytest.fixture(scope="session")
def multiplexed_checkpoints(tmp_path_factory):
    """Three small open_clip checkpoints (different seeds) under one allowed directory, plus a
    broken one and a symlink that escapes it; for a multiplexed profile with an LRU of two."""
    import os

    from tests.support.tiny_models import make_open_clip_dir

    base = tmp_path_factory.mktemp("multiplexed")
    root = base / "checkpoints"
    for seed, model_id in enumerate(("alpha", "beta", "gamma"), start=1):
        make_open_clip_dir(root / model_id, seed=seed)
    broken = root / "broken"
    broken.mkdir()
    (broken / "open_clip_config.json").write_text(
        (root / "alpha" / "open_clip_config.json").read_text()
    )
    (broken / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")
    make_open_clip_dir(base / "outside", seed=9)
    os.symlink(base / "outside", root / "escape")
    return root
