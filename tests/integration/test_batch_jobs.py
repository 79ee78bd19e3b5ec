"""`clipfleet batch` on the integration tier's one local Ray: a score job over a CSV with a bad
row (equal to the plain encoder classes and to the running service's /v1/score), the other
input formats, and a job killed midway then finished with --resume (every row exactly once)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import requests

from clipfleet.config import ClipModelSpec, FetchLimits
from clipfleet.images.decode import decode_image
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.scoring import clip_scores
from clipfleet.tools.cli import main
from tests.support.batch_inputs import pairs_table, write_config, write_table
from tests.support.images import LoopbackServer, image_bytes
from tests.support.serve_apps import wait_ready
from tests.support.servers import ThreadedImageServer
from tests.support.tiny_models import make_open_clip_siglip_dir

ROOT = Path(__file__).resolve().parents[2]
ROWS = 8
SLOW_IMAGE_S = 1.0


@pytest.fixture(scope="module")
def ray_address(serve_apps):
    """The session's one local Ray (started with Serve by the conftest fixture)."""
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_args):
    folder = tmp_path_factory.mktemp("batch")
    table = pairs_table(folder, ROWS, bad_row=2)
    encoder = {"ray_actor_options": {"num_cpus": 0.5}, "user_config": {"max_batch_size": 4}}
    config = write_config(folder / "config.yaml", tiny_args, encoder)
    return folder, table, config


@pytest.fixture(scope="module")
def plain(tiny_args):
    return load_clip_model(tiny_args.profiles["fast"].clip, choose_device("cpu"), False)


def run(config: Path, mode: str, source: Path, output: Path, *extra: str) -> int:
    argv = ["batch", mode, "--config", str(config), "--input", str(source)]
    return main([*argv, "--output", str(output), *extra])


def read_output(folder: Path) -> pa.Table:
    return pads.dataset(folder, format="parquet").to_table()


def test_score_job_matches_the_plain_encoders_and_the_service(
    data, plain, ray_address, app_url, capsys
):
    folder, table, config = data
    source = write_table(table, folder / "pairs.csv")
    assert run(config, "score", source, folder / "scored", "--shard-rows", "3") == 1
    assert "8 rows (1 failed)" in capsys.readouterr().out
    result = read_output(folder / "scored")
    assert result["id"].to_pylist() == list(range(ROWS))  # input order, every row once
    assert result.column_names == ["id", "image", "caption", "clip_score", "model", "error"]
    scores, errors = result["clip_score"].to_pylist(), result["error"].to_pylist()
    assert scores[2] is None and errors[2].startswith("unsupported_media_type")
    good = [i for i in range(ROWS) if i != 2]
    limits = plain.input_geometry().limits(FetchLimits())  # decoded as the service decodes
    images = [decode_image((folder / table["image"][i].as_py()).read_bytes(), limits) for i in good]
    texts = [table["caption"][i].as_py() for i in good]
    expected = clip_scores(plain.embed_images(images), plain.encode_texts(texts))
    np.testing.assert_allclose(
        [scores[i] for i in good], [e["clip_score"] for e in expected], atol=1e-3
    )
    pairs = [
        {
            "image": {"base64": image_base64_of(folder / table["image"][i].as_py())},
            "text": table["caption"][i].as_py(),
        }
        for i in good[:3]
    ]
    served = requests.post(f"{app_url}/v1/score", json={"pairs": pairs}, timeout=60)
    assert served.status_code == 200, served.text
    np.testing.assert_allclose(
        [r["clip_score"] for r in served.json()["results"]],
        [scores[i] for i in good[:3]],
        atol=1e-3,
    )


def image_base64_of(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.parquet"])
def test_json_lines_and_parquet_inputs(data, ray_address, name):
    folder, table, config = data
    source = write_table(table, folder / name)
    output = folder / f"tagged-{name}"
    assert run(config, "tag", source, output, "--labels", "cat,dog", "--top-k", "1") == 1
    result = read_output(output)
    assert result["id"].to_pylist() == list(range(ROWS))
    tags = result["tags"].to_pylist()
    assert tags[2] is None and all(len(tags[i]) == 1 for i in range(ROWS) if i != 2)


def test_folder_of_images_embeds_every_image(data, plain, ray_address, tmp_path):
    folder, _, config = data
    images = folder / "images"
    assert run(config, "embed", images, tmp_path / "embedded") == 1  # broken.jpg
    result = read_output(tmp_path / "embedded").to_pylist()
    by_path = {row["path"]: row for row in result}
    assert len(by_path) == len(result) == ROWS + 1
    assert by_path["broken.jpg"]["embedding"] is None
    limits = plain.input_geometry().limits(FetchLimits())  # decoded as the service decodes
    want = plain.embed_images([decode_image((images / "img000.jpg").read_bytes(), limits)])
    assert float(np.dot(by_path["img000.jpg"]["embedding"], want[0])) >= 0.9999
    assert by_path["img000.jpg"]["model"] == plain.info.model


class SlowImages(LoopbackServer):
    """/<n>.jpg answers after SLOW_IMAGE_S: a job slow enough to be killed midway."""

    def build_app(self):
        from aiohttp import web

        async def image(request):
            await asyncio.sleep(SLOW_IMAGE_S)
            seed = int(request.match_info["n"])
            return web.Response(body=image_bytes(seed=seed), content_type="image/jpeg")

        app = web.Application()
        app.router.add_get("/{n}.jpg", image)
        return app


def test_a_killed_job_resumes_and_writes_every_row_once(data, ray_address, tmp_path, capsys):
    _, _, config = data
    server = ThreadedImageServer(SlowImages()).start()
    try:
        rows = 24
        urls = [f"{server.base_url}/{i % 5}.jpg" for i in range(rows)]
        source = write_table(
            pa.table(
                {"id": list(range(rows)), "url": urls, "text": [f"t{i}" for i in range(rows)]}
            ),
            tmp_path / "urls.csv",
        )
        output = tmp_path / "out"
        command = [
            sys.executable,
            "-m",
            "clipfleet.tools.cli",
            "batch",
            "score",
            "--config",
            str(config),
            "--input",
            str(source),
            "--output",
            str(output),
            "--address",
            ray_address,
            "--shard-rows",
            "4",
            "--batch-size",
            "2",
            "--decode-cpus",
            "4",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        job = subprocess.Popen(
            command,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not list(output.glob("part-*.parquet")) and time.monotonic() < deadline:
                assert job.poll() is None, "the job ended before it could be killed"
                time.sleep(0.1)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(30)
        written = len(list(output.glob("part-*.parquet")))
        assert 1 <= written < rows // 4, f"{written} parts: not killed midway"
        assert run(config, "score", source, output, "--resume", "--shard-rows", "4") == 0
        assert "already done" in capsys.readouterr().out
        result = read_output(output)
        assert result["id"].to_pylist() == list(range(rows))
        assert result["error"].null_count == rows
        assert len(list(output.glob("part-*.parquet"))) == rows // 4
        assert not list(output.glob("_tmp-*"))
    finally:
        server.stop()


def test_a_siglip_model_tags_alike_under_serve_and_in_a_batch_job(
    serve_apps, tiny_args, ray_address, tmp_path
):
    """A SigLIP model (sigmoid with its learned bias) served under real Serve and run by
    `clipfleet batch tag` on Ray Data gives the same tags both ways: one scoring path
    (`clipfleet batch tag` once applied softmax without the bias whatever the model)."""
    siglip_dir = make_open_clip_siglip_dir(tmp_path / "siglip", logit_bias=2.0)
    siglip = ClipModelSpec(model=f"local-dir:{siglip_dir}")
    fast = tiny_args.profiles["fast"].model_copy(update={"variants": {"stable": siglip}})
    args = tiny_args.model_copy(update={"profiles": {**tiny_args.profiles, "fast": fast}})
    serve_apps.apply("siglip", "/siglip", args)
    url = serve_apps.url("/siglip")
    wait_ready(url)
    folder = tmp_path / "job"
    table = pairs_table(folder, 3, bad_row=None)
    source = write_table(table, folder / "pairs.csv")
    config = write_config(tmp_path / "config.yaml", args, {"user_config": {"max_batch_size": 4}})
    labels = ["cat", "dog", "tree"]
    argv = ("--labels", ",".join(labels), "--top-k", "3")
    assert run(config, "tag", source, folder / "tagged", *argv) == 0
    batch_tags = read_output(folder / "tagged")["tags"].to_pylist()
    assert any(batch_tags), batch_tags  # a bias of +2 puts labels over the 0.5 threshold
    for index, tags in enumerate(batch_tags):
        image = {"base64": image_base64_of(folder / table["image"][index].as_py())}
        request = {"image": image, "labels": labels, "top_k": 3}
        served = requests.post(f"{url}/v1/tag", json=request, timeout=60)
        assert served.status_code == 200, served.text
        assert served.json()["activation"] == "sigmoid"
        served_tags = served.json()["tags"]
        assert [t["label"] for t in served_tags] == [t["label"] for t in tags]
        np.testing.assert_allclose(
            [t["confidence"] for t in served_tags], [t["confidence"] for t in tags], atol=1e-4
        )
