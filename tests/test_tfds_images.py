"""`--dataset tfds:NAME` on a small TFDS dataset built here from generated images (no download):
its classes split like a folder's, its images decoded as PIL converts them, and a dataset that is
not prepared refused in seconds with one line."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfmeta import tasks
from tfmeta.config.data import DataConfig, TfdsConfig
from tfmeta.errors import DataError

from datasets import TINY_CLASSES as CLASSES, TINY_PER_CLASS as PER_CLASS, TinyShapes, shapes_folder

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    TinyShapes(data_dir=str(folder)).download_and_prepare()
    return folder


def config(data_dir, **fields) -> DataConfig:
    fields = {"split": [0.5, 0.25, 0.25], **fields}
    tfds_config = TfdsConfig(data_dir=str(data_dir), image_key="picture", label_key="kind",
                             **fields)
    return DataConfig(dataset="tfds:tiny_shapes", ways=3, shots=1, queries=2, tfds=tfds_config)


def test_classes_are_pooled_over_splits_and_split_by_the_seed(data_dir):
    source = tasks.build(config(data_dir))
    assert source.classes == {"train": 6, "val": 3, "test": 3}
    assert source.example_shape == (16, 16, 3) and not source.image_format.invert
    episode = next(iter(source.episodes("test", 0, 1).unbatch()))
    assert episode.support_x.shape == [3, 16, 16, 3] and episode.query_x.shape == [6, 16, 16, 3]
    from tfmeta.tasks import tfds_images
    pools, _ = tfds_images.pools("tiny_shapes", config(data_dir).tfds)
    assert sorted(int(n) for p in pools.values() for n in p.counts) == [PER_CLASS] * CLASSES
    # The pool's first image is the generator's, through PIL's conversion (an identity here).
    first = pools["train"].names[0]
    c = int(first.removeprefix("shape"))
    expected = np.asarray(shapes_folder.draw(shapes_folder.SHAPES[c % 8],
                                             shapes_folder.COLOURS[c // 8], 16,
                                             np.random.default_rng(100 * c)))
    matches = [np.array_equal(image, expected) for image in pools["train"].images[:PER_CLASS]]
    assert any(matches)


def test_grayscale_and_resize(data_dir):
    source = tasks.build(config(data_dir, color="grayscale", image_size=[8, 10]))
    assert source.example_shape == (8, 10, 1)
    assert source.image_format.channels == 1


def test_only_the_named_splits_are_read(data_dir):
    from tfmeta.tasks import tfds_images
    pools, _ = tfds_images.pools("tiny_shapes", config(data_dir, splits=["train"]).tfds)
    assert sum(int(p.counts.sum()) for p in pools.values()) == CLASSES * 3


@pytest.mark.parametrize("fields, message", [
    ({"image_key": "image"}, r"data\.tfds\.image_key 'image' is not a Image feature; the "
                             r"features are .*picture \(Image\)"),
    ({"splits": ["validation"]}, r"data\.tfds\.splits \['validation'\] are not among"),
])
def test_bad_keys_and_splits_name_the_field(data_dir, fields, message):
    bad = config(data_dir)
    for key, value in fields.items():
        setattr(bad.tfds, key, value)
    with pytest.raises(DataError, match=message):
        tasks.build(bad)


def test_an_unprepared_dataset_fails_in_seconds_with_one_line(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        tasks.build(DataConfig(dataset="tfds:mnist", tfds=TfdsConfig(data_dir=str(tmp_path))))
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "tfds:mnist is not prepared in" in message and "tfds build mnist" in message
    assert "\n" not in message


@pytest.mark.slow
def test_the_command_line_trains_on_a_prepared_dataset_without_its_builder(data_dir, tmp_path):
    """A fresh `tfmeta train` process, which has never imported TinyShapes, reads it from its
    prepared folder; and an unprepared dataset exits 2 with one `error:` line."""
    import json
    import os
    import subprocess
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(
        [sys.executable, "-m", "tfmeta_cli.main", "train", "--dataset", "tfds:tiny_shapes",
         "--data-dir", str(data_dir), "--ways", "3", "--queries", "2", "--epochs", "1",
         "--iterations", "5", "--landscape-every", "0", "--no-progress",
         "--run-dir", str(tmp_path / "run"), "--set", "data.tfds.image_key=picture",
         "--set", "data.tfds.label_key=kind", "--set", "data.tfds.split=[0.5,0.25,0.25]",
         "--set", "train.eval_tasks=10", "--set", "model.filters=8"],
        env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[-1])
    assert record["iteration"] == 5 and 0 <= record["meta_test/accuracy"] <= 1
    missing = subprocess.run(
        [sys.executable, "-m", "tfmeta_cli.main", "train", "--dataset", "tfds:mnist",
         "--data-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "other")],
        env=env, capture_output=True, text=True)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.returncode == 2 and len(errors) == 1 and "not prepared" in errors[0]
