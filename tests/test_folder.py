"""Your own images: a folder of class folders, split by a seed or by train/val/test folders,
decoded once into a cache that is rebuilt when a file changes, and every bad folder named in its
error; then meta-training on synthetic shapes and an export that answers their PNG files."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfmeta import tasks
from tfmeta.errors import DataError
from tfmeta.tasks import folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import shapes_folder  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return shapes_folder.write(tmp_path_factory.mktemp("shapes") / "shapes", classes=30,
                               per_class=8, size=20)


def quiet(**kwargs):
    return folder.FolderConfig(**kwargs)


def test_classes_are_split_by_the_seed_into_disjoint_train_val_and_test(shapes):
    one = tasks.from_directory(shapes, ways=5, shots=1, queries=3)
    assert one.classes == {"train": 18, "val": 6, "test": 6} and one.eval_split == "val"
    pools, fmt = folder.pools(quiet(data_dir=str(shapes)), progress=False, log=lambda _: None)
    names = {split: set(pool.names) for split, pool in pools.items()}
    assert set.union(*names.values()) == {p.name for p in shapes.iterdir()
                                           if not p.name.startswith(".")}
    assert sum(len(n) for n in names.values()) == 30
    other, _ = folder.pools(quiet(data_dir=str(shapes), split_seed=1), progress=False,
                            log=lambda _: None)
    assert set(other["test"].names) != names["test"]
    assert fmt.shape == (20, 20, 3) and not fmt.invert


def test_the_pool_holds_each_file_decoded_as_pil_converts_it(shapes):
    pools, fmt = folder.pools(quiet(data_dir=str(shapes), color="grayscale",
                                    image_size=[12, 16]), progress=False, log=lambda _: None)
    pool = pools["train"]
    assert pool.images.shape[1:] == (12, 16, 1) and fmt.channels == 1
    first = sorted((shapes / pool.names[0]).iterdir())[0]
    with Image.open(first) as image:
        expected = np.asarray(image.convert("L").resize((16, 12), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(pool.images[0, :, :, 0], expected)


def test_split_folders_are_used_as_given(tmp_path):
    for split, count in (("train", 6), ("val", 5), ("test", 5)):
        shapes_folder.write(tmp_path / split, classes=count, per_class=4, size=12,
                            seed=len(split))
    source = tasks.from_directory(tmp_path, ways=5, shots=1, queries=2)
    assert source.classes == {"train": 6, "val": 5, "test": 5}
    pools, _ = folder.pools(quiet(data_dir=str(tmp_path)), progress=False, log=lambda _: None)
    assert list(pools["val"].names) == sorted(p.name for p in (tmp_path / "val").iterdir())


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path):
    root = shapes_folder.write(tmp_path / "d", classes=12, per_class=4, size=12)
    lines = []
    config = quiet(data_dir=str(root), split=[0.5, 0.0, 0.5])
    cache = folder.prepare(config, progress=False, log=lines.append)
    assert len(lines) == 1 and "decoding 48 images of 12 classes" in lines[0]
    folder.prepare(config, progress=False, log=lines.append)
    assert len(lines) == 1   # reused
    shapes_folder.draw("ring", (200, 10, 10), 12, np.random.default_rng(5)).save(
        root / "circle-0" / "extra.png")
    folder.prepare(config, progress=False, log=lines.append)
    assert "1 files added, 0 removed, 0 changed" in lines[1]
    pools, _ = folder.pools(config, progress=False, log=lines.append)
    assert sum(int(p.counts.sum()) for p in pools.values()) == 49
    assert "val" not in pools and sorted(os.listdir(cache)) == ["images.npy", "manifest.json"]


def test_an_unreadable_file_is_named_and_leaves_no_cache_that_looks_complete(tmp_path):
    root = shapes_folder.write(tmp_path / "d", classes=6, per_class=4, size=12)
    (root / "square-0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"square-0/broken\.png: not a readable PNG or JPEG"):
        folder.prepare(quiet(data_dir=str(root)), progress=False, log=lambda _: None)
    # A header that reads but data cut short fails in the decode itself, after the arrays began.
    whole = (root / "bar-0" / "000.png").read_bytes()
    (root / "square-0" / "broken.png").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match=r"(?s)1 files of .* are not readable.*broken\.png"):
        folder.prepare(quiet(data_dir=str(root), image_size=[12, 12]), progress=False,
                       log=lambda _: None)
    assert os.listdir(root / ".tfmeta-cache" / "folder-12x12-rgb") == []


@pytest.mark.parametrize("make, message", [
    (lambda root: shapes_folder.write(root, classes=3, per_class=4, size=12),
     r"folder .*/d train split: 5-way episodes need at least 5 classes, but the split has"),
    (lambda root: shapes_folder.write(root, classes=12, per_class=2, size=12),
     r"classes have fewer examples than shots \+ queries = 1 \+ 2 = 3: .*\(2\)"),
    (lambda root: root.mkdir(), r"/d: no class folders with PNG or JPEG images"),
    (lambda root: None, r"/d: not a folder"),
])
def test_each_bad_folder_gets_its_error(tmp_path, make, message):
    make(tmp_path / "d")
    with pytest.raises(DataError, match=message):
        tasks.from_directory(tmp_path / "d", ways=5, shots=1, queries=2)


def test_mixed_sizes_need_an_image_size(tmp_path):
    root = shapes_folder.write(tmp_path / "d", classes=10, per_class=3, size=12)
    shapes_folder.draw("star", (0, 0, 250), 16, np.random.default_rng(0)).save(
        root / "star-0" / "big.png")
    with pytest.raises(DataError, match=r"different sizes .* is 12x12 .*big\.png is 16x16.*"
                                        r"data\.folder\.image_size"):
        tasks.from_directory(root, ways=2, shots=1, queries=1)
    source = tasks.from_directory(root, ways=2, shots=1, queries=1, image_size=(14, 14))
    assert source.example_shape == (14, 14, 3)


def test_the_manifest_names_every_file(shapes):
    cache = folder.prepare(quiet(data_dir=str(shapes)), progress=False, log=lambda _: None)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["files"]) == 240 and manifest["shape"] == [20, 20, 3]


@pytest.mark.trains
def test_meta_training_on_shapes_rises_above_chance_and_the_export_answers_png_files(
        shapes, tmp_path):
    """The folder preset, small, on RGB shapes: meta-test accuracy (5-way 1-shot episodes of
    held-out shapes; chance 0.2) before any meta-step, when adaptation starts from the random
    initialization (0.58 measured), and after 150 meta-steps (0.65); then the export answers PNG
    files of the test classes, one query per request in TF Serving's session loader, as
    in-process adaptation does on the cached images."""
    import tensorflow as tf

    from helpers import SessionModel
    from tfmeta import config as config_lib, export, training
    from tfmeta.adaptation import adapt
    from tfmeta.models import query_outputs
    from tfmeta.run import Run
    config = config_lib.load("folder", [
        f"data.folder.data_dir={shapes}", f"run_dir={tmp_path / 'run'}", "data.queries=3",
        "model.filters=16", "train.epochs=3", "train.iterations=50", "train.eval_tasks=100",
        "train.eval_at_start=true", "landscape.every=0"])
    run_dir = training.train(config, progress=False, log=lambda _: None)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    accuracy = [r["meta_test/accuracy"] for r in history]
    assert accuracy[-1] > 0.5 and accuracy[-1] > accuracy[0] + 0.04, accuracy

    version = export.export_run(run_dir, tmp_path / "models" / "shapes")
    metadata = json.loads((version / export.METADATA_FILE).read_text())
    assert metadata["image_format"] == {"height": 20, "width": 20, "channels": 3,
                                        "invert": False}
    run = Run.open(run_dir)
    run.restore()
    pools, _ = folder.pools(config.data.folder, progress=False, log=lambda _: None)
    test = pools["test"]
    rng = np.random.default_rng(0)
    classes = rng.choice(test.classes, 5, replace=False)
    files = [sorted((shapes / test.names[c]).iterdir()) for c in classes]
    support = [f[0].read_bytes() for f in files]
    queries = [f[1].read_bytes() for f in files]
    offsets = np.concatenate([[0], np.cumsum(test.counts)])
    as_float = lambda i: tf.constant(test.images[[offsets[c] + i for c in classes]] / 255.0,  # noqa
                                     tf.float32)
    labels = np.arange(5, dtype=np.int32)
    params = [tf.convert_to_tensor(v) for v in run.eval_model.trainable_variables]
    adapted, _ = adapt(run.eval_model, params, (as_float(0), tf.constant(labels)),
                       run.config.adapt, steps=run.config.adapt.eval_steps)
    expected = query_outputs(run.eval_model, adapted, as_float(0), as_float(1)).numpy()
    session = SessionModel(version)
    try:
        for i, query in enumerate(queries):
            served = session.run("adapt_predict_images", {
                "support_images": np.array(support, object), "support_y": labels,
                "query_images": np.array([query], object)})
            np.testing.assert_allclose(served["logits"], expected[i:i + 1], atol=1e-4)
    finally:
        session.close()


@pytest.mark.trains
def test_data_prepare_folder_builds_the_cache_training_reads(tmp_path):
    import subprocess
    root = shapes_folder.write(tmp_path / "d", classes=12, per_class=4, size=12)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    prepared = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "data", "prepare",
                               "folder", "--source", str(root), "--color", "grayscale",
                               "--no-progress"], env=env, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    assert "12 classes, 48 images of 12x12x1" in prepared.stdout
    assert "--set data.folder.color=grayscale" in prepared.stdout
    lines = []
    folder.prepare(quiet(data_dir=str(root), color="grayscale"), progress=False,
                   log=lines.append)
    assert lines == []   # the cache the command wrote
    bad = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "data", "prepare", "folder",
                          "--source", str(tmp_path / "none")], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "none: not a folder" in bad.stderr


def test_a_jpeg_grayscale_folder_reads_as_pil_decodes_it(tmp_path):
    root = shapes_folder.write(tmp_path / "d", classes=6, per_class=4, size=16, grayscale=True,
                               jpeg=True)
    pools, fmt = folder.pools(quiet(data_dir=str(root), color="grayscale",
                                    split=[0.5, 0.0, 0.5]), progress=False, log=lambda _: None)
    assert fmt.shape == (16, 16, 1) and set(pools) == {"train", "test"}
    pool = pools["train"]
    with Image.open(sorted((root / pool.names[0]).iterdir())[0]) as image:
        np.testing.assert_array_equal(pool.images[0, :, :, 0], np.asarray(image.convert("L")))


@pytest.mark.trains
def test_the_command_line_trains_and_exports_a_custom_keras_model(shapes, tmp_path):
    """`model.arch: custom` with a factory named by its dotted path, from `tfmeta train` to
    `tfmeta export`: the stock batch norm is converted with one warning line, and the export
    rebuilds the same model from the factory."""
    import subprocess
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    train = subprocess.run(
        [sys.executable, "-m", "tfmeta_cli.main", "train", "--dataset", "folder", "--data-dir",
         str(shapes), "--epochs", "1", "--iterations", "5", "--landscape-every", "0",
         "--no-progress", "--run-dir", str(tmp_path / "run"), "--set", "model.arch=custom",
         "--set", "model.factory=custom_models:small_cnn", "--set", "train.eval_tasks=10"],
        env=env, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-3000:]
    warnings = [line for line in train.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "converted 2 stock normalization layers" in warnings[0]
    export = subprocess.run(
        [sys.executable, "-m", "tfmeta_cli.main", "export", str(tmp_path / "run"), "--out",
         str(tmp_path / "models" / "custom")], env=env, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr[-3000:]
    refused = subprocess.run(
        [sys.executable, "-m", "tfmeta_cli.main", "train", "--dataset", "folder", "--data-dir",
         str(shapes), "--run-dir", str(tmp_path / "other"), "--set", "model.arch=custom",
         "--set", "model.factory=custom_models:with_dropout"],
        env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "dropout (Dropout): draws new random numbers" in \
        refused.stderr


def test_images_too_small_for_max_pooling_are_refused_in_one_sentence(tmp_path):
    """conv4 with max-pooling halves the image 4 times: 12x12 images are refused before any
    layer is built, with the remedy, rather than by Keras' "output size would be zero"."""
    from tfmeta import config as config_lib
    from tfmeta.errors import ConfigError
    from tfmeta.run import build_model
    data = shapes_folder.write(tmp_path / "small", classes=20, per_class=4, size=12)
    config = config_lib.load("folder", ["data.ways=3", "data.shots=1", "data.queries=1"],
                             data_dir=str(data))
    with pytest.raises(ConfigError, match="model.arch=conv4 halves the images 4 times with "
                                          "max-pooling, so it needs at least 16x16, but folder "
                                          "has 12x12; resize them .* or set model.pool=stride"):
        build_model(config, tasks.build(config.data))
