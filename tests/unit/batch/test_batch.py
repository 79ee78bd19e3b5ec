"""clipfleet batch without Ray: input formats, the decode task, the model actor's results
against the plain encoder classes, the shard writer and resume checks, settings from config."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipfleet.batch.command import settings_from
from clipfleet.batch.inputs import InputError, Location, load_input
from clipfleet.batch.output import JOB_FILE, OutputError, ShardWriter, prepare_output
from clipfleet.batch.settings import SettingsError, resolve_model, size_actors
from clipfleet.batch.stages import ERROR, ROW_ID, SHARD, DecodeTask, ModelActor, decode_batch
from clipfleet.config import FetchLimits
from clipfleet.images.decode import decode_image
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.embedding_space import embedding_space, stamp
from clipfleet.scoring import clip_scores, zero_shot
from clipfleet.tools.cli import build_parser
from tests.support.batch_inputs import BAD_IMAGE, pairs_table, write_config, write_table
from tests.support.images import image_bytes

ROWS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_args):
    folder = tmp_path_factory.mktemp("batch")
    table = pairs_table(folder, ROWS, bad_row=2)
    config = write_config(folder / "config.yaml", tiny_args, {"user_config": {"max_batch_size": 4}})
    return folder, table, config


def parse(config, mode: str, *extra: str):
    argv = ["batch", mode, "--config", str(config), "--input", "x", "--output", "y", *extra]
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("name", ["pairs.csv", "pairs.jsonl", "pairs.parquet"])
def test_each_table_format_reads_with_score_csv_column_defaults(data, name):
    folder, table, _ = data
    source = load_input(str(write_table(table, folder / name)))
    assert source.table.num_rows == ROWS
    assert (source.image_column, source.text_column) == ("image", "caption")
    assert source.table["image"].to_pylist() == table["image"].to_pylist()
    assert source.base.path == str(folder)


def test_folder_of_parquet_parts_and_folder_of_images(data, tmp_path):
    _, table, _ = data
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(table.slice(0, 4), parts / "a.parquet")
    pq.write_table(table.slice(4), parts / "b.parquet")
    assert load_input(str(parts)).table.num_rows == ROWS
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        (images / f"{index}.jpg").write_bytes(image_bytes(seed=index))
    (images / "notes.txt").write_text("not an input")
    source = load_input(str(images))
    assert source.format == "images" and source.text_column is None
    assert source.table["path"].to_pylist() == ["0.jpg", "1.jpg", "2.jpg"]


def test_unusable_inputs_say_what_to_fix(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_input(str(tmp_path / "missing.csv"))
    (tmp_path / "data.txt").write_text("a,b\n")
    with pytest.raises(InputError, match="--format"):
        load_input(str(tmp_path / "data.txt"))
    (tmp_path / "x.csv").write_text("image,caption\na.jpg,cat\n")
    with pytest.raises(InputError, match="no column 'picture'"):
        load_input(str(tmp_path / "x.csv"), image_column="picture")


def decoded(folder, table, limits=None, image="image", text="caption"):
    plan = DecodeTask(Location.parse(str(folder)), image, text, limits or FetchLimits(), 1000)
    return decode_batch(table, plan)


def test_decode_gives_bad_rows_an_error_and_never_raises(data):
    folder = data[0]
    rows = pa.table(
        {
            "image": ["images/img000.jpg", f"images/{BAD_IMAGE}", "images/nope.jpg", "", "x"],
            "caption": ["ok", "ok", "ok", "ok", "   "],
        }
    )
    errors = decoded(folder, rows)[ERROR].to_pylist()
    assert errors[0] is None
    assert errors[1].startswith("unsupported_media_type")
    assert errors[2].startswith("cannot read image file") and errors[2].endswith("not found")
    assert errors[3] == "empty image"
    assert errors[4] == "empty caption"
    too_large = decoded(folder, rows.slice(0, 1), FetchLimits(max_bytes=1024))[ERROR]
    assert too_large.to_pylist()[0].endswith("larger than 1024 bytes")


def test_image_urls_go_through_the_ssrf_guard(data):
    folder, _, _ = data
    rows = pa.table({"image": ["http://127.0.0.1:9/a.jpg"], "caption": ["cat"]})
    error = decoded(folder, rows)[ERROR].to_pylist()[0]
    assert "not allowed" in error or "private" in error or "loopback" in error, error


@pytest.fixture(scope="module")
def plain(tiny_args):
    """The service's own encoder class, loaded the plain way."""
    return load_clip_model(tiny_args.profiles["fast"].clip, choose_device("cpu"), False)


def actor_output(data, mode, *extra):
    folder, table, config = data
    args = parse(config, mode, *extra)
    settings = settings_from(args, gpus=0, cpus=2)
    table = table.append_column(ROW_ID, pa.array(range(ROWS), pa.int64()))
    table = table.append_column(SHARD, pa.array([0] * ROWS, pa.int64()))
    text_column = "caption" if settings.needs_text else None
    image_column = "image" if settings.needs_image else None
    source = decoded(folder, table, image=image_column, text=text_column)
    return ModelActor(settings, text_column)(source), folder, table


def plain_image_vectors(plain, folder, names, limits=FetchLimits()):
    # What the service does: the fetcher decodes (draft + shrink), the encoder preprocesses.
    images = [decode_image((folder / name).read_bytes(), limits) for name in names]
    return plain.embed_images(images)


def test_score_matches_the_plain_encoder_classes(data, plain):
    result, folder, table = actor_output(data, "score")
    assert result.column_names == [
        "id",
        "image",
        "caption",
        ROW_ID,
        SHARD,
        "clip_score",
        "model",
        "error",
    ]
    good = [i for i in range(ROWS) if i != 2]
    names = [table["image"][i].as_py() for i in good]
    texts = plain.encode_texts([table["caption"][i].as_py() for i in good])
    expected = [
        s["clip_score"] for s in clip_scores(plain_image_vectors(plain, folder, names), texts)
    ]
    scores = result["clip_score"].to_pylist()
    assert scores[2] is None and result["error"][2].as_py().startswith("unsupported_media_type")
    np.testing.assert_allclose([scores[i] for i in good], expected, atol=1e-3)


def test_embed_is_a_fixed_size_float32_list_equal_to_the_plain_encoder(data, plain, tiny_args):
    result, folder, table = actor_output(data, "embed")
    # the service's embedding_space for these weights, beside each vector (null for bad rows)
    space = embedding_space(stamp(plain)["model_space"], tiny_args.fetch)
    assert result["embedding_space"].to_pylist() == [space] * 2 + [None] + [space] * 3
    field = result.schema.field("embedding")
    assert pa.types.is_fixed_size_list(field.type) and field.type.value_type == pa.float32()
    assert field.type.list_size == plain.info.embed_dim
    vectors = result["embedding"].to_pylist()
    assert vectors[2] is None
    names = [table["image"][i].as_py() for i in (0, 1, 3)]
    expected = plain_image_vectors(plain, folder, names)
    for got, want in zip([vectors[0], vectors[1], vectors[3]], expected, strict=True):
        assert float(np.dot(got, want)) >= 0.9999
    assert result["model"].to_pylist() == [plain.info.model] * 2 + [None] + [plain.info.model] * 3


def test_tag_uses_the_labels_template_and_the_models_own_tag_semantics(data, plain):
    labels = ["cat", "dog", "tree"]
    result, folder, table = actor_output(
        data,
        "tag",
        "--labels",
        ",".join(labels),
        "--prompt-template",
        "art of {label}",
        "--top-k",
        "2",
    )
    tags = result["tags"].to_pylist()
    image = plain_image_vectors(plain, folder, [table["image"][0].as_py()])[0]
    prompts = plain.encode_texts([f"art of {label}" for label in labels])
    expected = zero_shot(image, prompts, labels, plain.logit_scale, 2)
    assert [t["label"] for t in tags[0]] == [t["label"] for t in expected]
    np.testing.assert_allclose(
        [t["confidence"] for t in tags[0]], [t["confidence"] for t in expected], atol=1e-5
    )
    assert tags[2] is None


def test_tag_defaults_are_v1_tags(data, tiny_args):
    settings = settings_from(parse(data[2], "tag"), gpus=0, cpus=2)
    assert settings.tag.labels == tiny_args.default_labels
    assert settings.tag.prompt_template == tiny_args.prompt_template
    assert settings.tag.top_k == 5
    with pytest.raises(SettingsError, match="label"):
        settings_from(parse(data[2], "tag", "--prompt-template", "no placeholder"), 0, 2)


def test_settings_come_from_the_encoders_deployment_entry(data, tiny_args):
    settings = settings_from(parse(data[2], "score"), gpus=0, cpus=2)
    assert settings.batch_size == 4  # clip_fast's user_config.max_batch_size
    assert settings.spec == tiny_args.profiles["fast"].clip
    entry = {
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0.25},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 8},
    }
    on_gpu = size_actors(entry, gpus_available=1, cpus_per_node=16)
    assert (on_gpu.num_gpus, on_gpu.min_actors, on_gpu.max_actors) == (0.25, 1, 4)
    on_cpu = size_actors(entry, gpus_available=0, cpus_per_node=2)
    assert (on_cpu.num_gpus, on_cpu.max_actors, on_cpu.torch_threads) == (0, 1, 2)
    assert size_actors(entry, 0, 2, actors=(2, 3)).max_actors == 3


def test_profile_and_variant_use_the_model_grammar(tiny_args):
    assert resolve_model(tiny_args, None, None) == ("fast", "stable")
    assert resolve_model(tiny_args, "accurate", None) == ("accurate", "stable")
    with pytest.raises(SettingsError, match="no variant 'canary'"):
        resolve_model(tiny_args, "fast/canary", None)
    with pytest.raises(SettingsError, match="unknown profile"):
        resolve_model(tiny_args, "nope", None)


def test_shards_are_written_whole_and_resume_checks_the_job(tmp_path):
    out = Location.parse(str(tmp_path / "out"))
    job = {"mode": "score", "rows": 5}
    assert prepare_output(out, job, resume=False) == set()
    writer = ShardWriter(out, {0: 3, 1: 2})
    batch = pa.table(
        {"id": [4, 0, 1], ROW_ID: [4, 0, 1], SHARD: [1, 0, 0], "error": [None, None, "bad"]}
    )
    writer.add(batch)
    assert not (tmp_path / "out" / "part-000000.parquet").exists()  # 2 of its 3 rows so far
    writer.add(pa.table({"id": [2], ROW_ID: [2], SHARD: [0], "error": [None]}))
    written = pq.read_table(tmp_path / "out" / "part-000000.parquet")
    assert written.column_names == ["id", "error"] and written["id"].to_pylist() == [0, 1, 2]
    assert (writer.rows, writer.failed, writer.unfinished) == (3, 1, [1])
    (tmp_path / "out" / "_tmp-dead.parquet").write_bytes(b"half")
    with pytest.raises(OutputError, match="--resume"):
        prepare_output(out, job, resume=False)
    with pytest.raises(OutputError, match="rows"):
        prepare_output(out, {**job, "rows": 6}, resume=True)
    assert prepare_output(out, job, resume=True) == {0}
    assert not (tmp_path / "out" / "_tmp-dead.parquet").exists()
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text()) == job


def test_cli_registers_the_batch_subcommands(data):
    args = parse(data[2], "tag", "--labels", "a,b", "--actors", "1,3", "--resume")
    assert (args.command, args.batch_mode, args.actors, args.resume) == (
        "batch",
        "tag",
        (1, 3),
        True,
    )
    args = parse(data[2], "embed", "--target", "text")
    assert args.target == "text"


def test_embed_target_text_embeds_the_captions(data, plain):
    result, _, table = actor_output(data, "embed", "--target", "text")
    vectors = result["embedding"].to_pylist()
    expected = plain.encode_texts(table["caption"].to_pylist())
    for index in (0, 2, 5):  # row 2's image is broken, but only its caption is embedded
        assert float(np.dot(vectors[index], expected[index])) >= 0.9999
    assert result["error"].null_count == ROWS


def test_blocks_cover_only_the_unfinished_shards_in_order():
    from clipfleet.batch.job import blocks

    parts = blocks(pa.table({"a": list(range(10))}), todo=[0, 2], shard_rows=4, block_rows=3)
    assert [part["a"].to_pylist() for part in parts] == [[0, 1, 2], [3], [8, 9]]
    assert [part[SHARD].to_pylist() for part in parts] == [[0, 0, 0], [0], [2, 2]]
    assert pa.concat_tables(parts)[ROW_ID].to_pylist() == [0, 1, 2, 3, 8, 9]


def test_tag_on_a_siglip_model_is_sigmoid_with_its_bias_as_v1_tag(data, tiny_args, tmp_path):
    # `clipfleet batch tag` once applied softmax without the bias whatever the model.
    from clipfleet.config import ClipModelSpec
    from clipfleet.scoring import semantic_tags
    from tests.support.tiny_models import make_open_clip_siglip_dir

    folder, table, _ = data
    siglip_dir = make_open_clip_siglip_dir(tmp_path / "siglip", logit_bias=2.0)
    siglip = ClipModelSpec(model=f"local-dir:{siglip_dir}")
    fast = tiny_args.profiles["fast"].model_copy(update={"variants": {"stable": siglip}})
    args = tiny_args.model_copy(update={"profiles": {**tiny_args.profiles, "fast": fast}})
    config = write_config(tmp_path / "config.yaml", args, {"user_config": {"max_batch_size": 4}})
    labels = ["cat", "dog", "tree"]
    # a bias of +2 puts random vectors' labels over the 0.5 threshold, so tags are compared
    model = load_clip_model(siglip, choose_device("cpu"), False)
    assert model.semantics.activation == "sigmoid" and model.semantics.logit_bias != 0.0
    result, _, _ = actor_output((folder, table, config), "tag", "--labels", ",".join(labels))
    image = plain_image_vectors(model, folder, [table["image"][0].as_py()])[0]
    prompts = model.encode_texts([args.prompt_template.replace("{label}", x) for x in labels])
    expected = semantic_tags(image, prompts, labels, model.semantics, 3)
    got = result["tags"].to_pylist()[0]
    assert len(got) == 3
    assert [t["label"] for t in got] == [t["label"] for t in expected]
    np.testing.assert_allclose(
        [t["confidence"] for t in got], [t["confidence"] for t in expected], atol=1e-5
    )
    softmax = zero_shot(image, prompts, labels, model.logit_scale, 3)
    assert [t["confidence"] for t in got] != pytest.approx([t["confidence"] for t in softmax])
