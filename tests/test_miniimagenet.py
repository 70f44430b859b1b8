"""MiniImagenet on fixtures in both real layouts (JPEGs + CSVs, pickle caches), made at test time."""

import json
import pickle
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tfmeta import config as config_lib, tasks
from tfmeta.config.data import DataConfig, MiniImagenetConfig
from tfmeta.errors import DataError
from tfmeta.run import Run
from tfmeta.tasks import miniimagenet
from tfmeta_cli.main import cli

from datasets import MINI_CLASSES as CLASSES, PER_CLASS, label, write_csv_layout

def write_pickle_layout(csv_root, root, seed=1):
    """The same images as mini-imagenet-cache-{split}.pkl: rows shuffled, class_dict indexing."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split in CLASSES:
        lines = (csv_root / f"{split}.csv").read_text().split()[1:]
        files = [line.split(",") for line in lines]
        images = np.stack([np.asarray(Image.open(csv_root / "images" / f).convert("RGB"))
                           for f, _ in files])
        perm = rng.permutation(len(files))  # row r of the pickle holds image perm[r]
        where = np.argsort(perm)
        class_dict = {}
        for i, (_, name) in enumerate(files):
            class_dict.setdefault(name, []).append(int(where[i]))
        shuffled = dict(sorted(class_dict.items(), key=lambda kv: rng.random()))
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images[perm], "class_dict": shuffled}, f)
    return root


@pytest.fixture(scope="module")
def csv_copy(tmp_path_factory):
    return write_csv_layout(tmp_path_factory.mktemp("csv") / "miniimagenet")


@pytest.fixture(scope="module")
def pickle_copy(csv_copy, tmp_path_factory):
    return write_pickle_layout(csv_copy, tmp_path_factory.mktemp("pkl") / "mini")


def source(data_dir, **fields):
    config = DataConfig(dataset="miniimagenet", ways=5, shots=1, queries=2,
                        miniimagenet=MiniImagenetConfig(data_dir=str(data_dir), **fields))
    return tasks.build(config)


def first_batches(task_source, split, n=3):
    return [tuple(np.asarray(t) for t in e)
            for e in task_source.episodes(split, 0, 4).take(n)]


def test_both_layouts_prepare_the_same_arrays_and_episodes(csv_copy, pickle_copy, tmp_path):
    a = miniimagenet.prepare(csv_copy, tmp_path / "a", progress=False, log=lambda _: None)
    b = miniimagenet.prepare(pickle_copy, tmp_path / "b", progress=False, log=lambda _: None)
    assert (a["layout"], b["layout"]) == ("csv", "pickle")
    assert a["splits"] == b["splits"]
    for split, count in CLASSES.items():
        assert a["splits"][split]["classes"] == sorted(label(split, c) for c in range(count))
        np.testing.assert_array_equal(np.load(tmp_path / "a" / f"{split}.npy"),
                                      np.load(tmp_path / "b" / f"{split}.npy"))
    from_csv, from_pickle = source(tmp_path / "a"), source(tmp_path / "b")
    assert from_csv.example_shape == (84, 84, 3) and from_csv.eval_split == "val"
    assert from_csv.classes == {"train": 8, "val": 6, "test": 6}
    for split in ("train", "val", "test"):
        for x, y in zip(first_batches(from_csv, split), first_batches(from_pickle, split)):
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)
    # Classes sorted by label, each class's images in CSV row order.
    pool = np.load(tmp_path / "a" / "train.npy")
    rows = [line.split(",") for line in (csv_copy / "train.csv").read_text().split()[1:]]
    second = [f for f, name in rows if name == label("train", 1)]
    first = Image.open(csv_copy / "images" / second[0]).convert("RGB")
    np.testing.assert_array_equal(pool[PER_CLASS], np.asarray(first))


def test_splits_do_not_share_classes_and_augmentation_is_off(csv_copy, tmp_path):
    shutil.copytree(csv_copy, tmp_path / "copy",
                    ignore=shutil.ignore_patterns(".tfmeta-cache"))
    plain = source(tmp_path / "copy")
    prepared = tmp_path / "copy" / ".tfmeta-cache" / "miniimagenet"
    assert (prepared / "manifest.json").is_file()  # prepared on first use, beside the data
    train = np.load(prepared / "train.npy")
    for split in ("val", "test"):
        x = first_batches(plain, split, 1)[0][0].reshape(-1, 84, 84, 3)
        images = np.rint(x * 255).astype(np.uint8)
        assert not any((train == image).all(axis=(1, 2, 3)).any() for image in images)
    again = source(tmp_path / "copy")
    for u, v in zip(first_batches(plain, "train", 1)[0], first_batches(again, "train", 1)[0]):
        np.testing.assert_array_equal(u, v)
    augmented = source(tmp_path / "copy", augment=True)
    a, b = first_batches(plain, "train", 1)[0], first_batches(augmented, "train", 1)[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], b[0])
    for split in ("val", "test"):  # augmentation touches meta-train only
        np.testing.assert_array_equal(first_batches(plain, split, 1)[0][0],
                                      first_batches(augmented, split, 1)[0][0])


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert re.search(needle, result.output), (needle, result.output)


def test_prepare_reports_counts(csv_copy, tmp_path):
    result = invoke("data", "prepare", "miniimagenet", "--source", csv_copy, "--out",
                    tmp_path / "cache", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "train: 8 classes, 48 images" in result.output
    assert f"train with --data-dir {tmp_path / 'cache'}" in result.output
    assert "warning: train: 8 classes; the standard split has 64" in result.output
    assert "warning: val: 6 classes do not have 600 images" in result.output
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert [sum(s["counts"]) for s in manifest["splits"].values()] == [48, 36, 36]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    again = invoke("data", "prepare", "miniimagenet", "--source", tmp_path / "cache", "--out",
                   tmp_path / "elsewhere")
    assert again.exit_code == 0 and "already a prepared cache" in again.output
    assert f"train with --data-dir {tmp_path / 'cache'}" in again.output


def test_prepare_names_missing_and_unreadable_files(csv_copy, tmp_path):
    broken = shutil.copytree(csv_copy, tmp_path / "broken")
    (broken / "images" / f"{label('val', 2)}00000003.jpg").unlink()
    result = invoke("data", "prepare", "miniimagenet", "--source", broken, "--out",
                    tmp_path / "cache", "--no-progress")
    assert_user_error(result, "1 image files named in the CSVs are missing",
                      f"{label('val', 2)}00000003.jpg")
    shutil.copy(csv_copy / "images" / f"{label('val', 2)}00000003.jpg", broken / "images")
    (broken / "images" / f"{label('test', 4)}00000001.jpg").write_bytes(b"not a jpeg")
    result = invoke("data", "prepare", "miniimagenet", "--source", broken, "--out",
                    tmp_path / "cache", "--no-progress")
    assert_user_error(result, "1 image files could not be read",
                      f"{label('test', 4)}00000001.jpg")
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_no_data_names_the_searched_paths_and_the_layouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--dataset", "miniimagenet", "--data-dir", tmp_path / "nothing",
                    "--no-progress")
    assert_user_error(result, "no MiniImagenet found", re.escape(str(tmp_path / "nothing")),
                      re.escape(str(tmp_path / "nothing" / "mini-imagenet")), "train.csv",
                      "mini-imagenet-cache-train.pkl", "tfmeta data prepare miniimagenet")
    # The failed start leaves no empty run directory (runs/miniimagenet-maml-<time>) behind.
    assert not list((tmp_path / "runs").glob("*"))
    result = invoke("data", "prepare", "miniimagenet", "--source", tmp_path, "--out",
                    tmp_path / "out")
    assert_user_error(result, "no MiniImagenet found")


def test_without_data_dir_the_default_places_are_searched(csv_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFMETA_DATA_DIR", str(tmp_path / "shared"))
    assert_user_error(invoke("train", "--dataset", "miniimagenet", "--no-progress"),
                      re.escape(str(tmp_path / "shared" / "miniimagenet")),
                      r"data/mini-imagenet", r"/data/miniimagenet")
    shutil.copytree(csv_copy, tmp_path / "shared" / "mini-imagenet",
                    ignore=shutil.ignore_patterns(".tfmeta-cache"))
    assert miniimagenet.locate("") == (tmp_path / "shared" / "mini-imagenet", "csv")


def test_too_few_classes_or_images_are_named(csv_copy, tmp_path):
    result = invoke("train", "--dataset", "miniimagenet", "--data-dir", csv_copy, "--ways", 7,
                    "--queries", 2, "--no-progress",
                    "--set", "data.miniimagenet.cache_dir=" + str(tmp_path / "c"))
    assert_user_error(result, "miniimagenet val split: 7-way episodes need at least 7 classes",
                      "has 6")
    small = write_csv_layout(tmp_path / "small", per_class={label("test", 3): 2})
    result = invoke("train", "--dataset", "miniimagenet", "--data-dir", small, "--queries", 2,
                    "--no-progress")
    assert_user_error(result, r"miniimagenet test split: 1 of 6 classes have fewer examples "
                              r"than shots \+ queries = 1 \+ 2 = 3: "
                              + label("test", 3) + r" \(2\)")


def test_bad_csv_and_pickle_are_named(csv_copy, pickle_copy, tmp_path):
    bad = shutil.copytree(csv_copy, tmp_path / "bad")
    (bad / "val.csv").write_text("file;class\nx;y\n")
    with pytest.raises(DataError, match=r"val.csv: the first line must be the header"):
        miniimagenet.prepare(bad, tmp_path / "out", progress=False, log=lambda _: None)
    bad_pickle = shutil.copytree(pickle_copy, tmp_path / "badp")
    (bad_pickle / "mini-imagenet-cache-test.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test.pkl: not a MiniImagenet"):
        miniimagenet.prepare(bad_pickle, tmp_path / "out", progress=False, log=lambda _: None)


@pytest.mark.trains
def test_train_evaluate_checkpoint_and_resume(pickle_copy, tmp_path):
    run = tmp_path / "run"
    common = ["--queries", 2, "--steps", 1, "--set", "adapt.test_steps=2", "--set",
              "model.filters=8", "--set", "train.eval_tasks=4", "--set", "train.meta_batch=2",
              "--landscape-every", 1, "--set", "landscape.flatness_tasks=2", "--set",
              "landscape.coherence_tasks=4", "--set", "landscape.batch=2", "--set",
              "landscape.max_iters=5", "--iterations", 2, "--no-progress"]
    result = invoke("train", "--dataset", "miniimagenet", "--data-dir", pickle_copy,
                    "--run-dir", run, "--epochs", 1, "--set",
                    "data.miniimagenet.cache_dir=" + str(tmp_path / "cache"), *common)
    assert result.exit_code == 0, result.output
    assert "preparing MiniImagenet (pickle layout)" in result.output
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and np.isfinite(history[0]["meta_test/accuracy"])
    assert np.isfinite(history[0]["landscape/flatness"])
    saved = Run(config_lib.load(str(run / "config.yaml")), run)
    assert saved.landscape().split == saved.source.eval_split == "val"
    assert list((run / "checkpoints").glob("ckpt-1.index"))
    result = invoke("train", "--resume", run, "--epochs", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "preparing" not in result.output
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [2, 4]
    result = invoke("evaluate", run, "--tasks", 4, "--steps", 2)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run / "evaluation-test.json").read_text())
    assert evaluation["split"] == "test"
    assert 0 <= evaluation["steps"]["2"]["accuracy"]["mean"] <= 1
    result = invoke("evaluate", run, "--tasks", 4, "--steps", 2, "--split", "val")
    assert result.exit_code == 0, result.output
    val = json.loads((run / "evaluation-val.json").read_text())
    # The val split is what training evaluated after its last epoch.
    assert val["steps"]["2"]["accuracy"]["mean"] == pytest.approx(
        history[-1]["meta_test/accuracy"], abs=1e-6)
