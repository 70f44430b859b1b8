"""A run trained with a relative --data-dir opens from any directory: for every dataset of the
registry that reads files, `tfmeta train` in one working directory, then `evaluate`, `export`
and `analyze` from another. The saved config holds each path field made absolute
(`config.data.absolute_paths`)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tfmeta.config.data import DATASETS
from tfmeta_cli.main import cli

from datasets import TinyShapes, shapes_folder, write_csv_layout

pytestmark = pytest.mark.slow

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
SMALL = ["--steps", 1, "--set", "adapt.test_steps=1", "--set", "model.filters=4", "--set",
         "train.eval_tasks=2", "--set", "train.meta_batch=1", "--epochs", 1, "--iterations", 1,
         "--no-progress", "--set", "landscape.flatness_tasks=1", "--set",
         "landscape.coherence_tasks=2", "--set", "landscape.batch=1", "--set",
         "landscape.max_iters=2"]


def write_data(dataset: str, folder: Path) -> list:
    """Writes (or links) `dataset`'s data at `folder`; returns its extra train arguments."""
    if dataset == "omniglot":
        folder.mkdir()
        for name in ("images_background_small1.zip", "images_background_small2.zip"):
            (folder / name).symlink_to(OMNIGLOT / name)
        return ["--ways", 3, "--shots", 1, "--queries", 1, "--set",
                "data.omniglot.split=character", "--set", "data.omniglot.holdout=20", "--set",
                "data.omniglot.image_size=14"]
    if dataset == "miniimagenet":
        write_csv_layout(folder)
        return ["--ways", 3, "--shots", 1, "--queries", 1, "--set",
                "data.miniimagenet.cache_dir=" + str(folder.name) + "-cache"]
    if dataset == "folder":
        shapes_folder.write(folder, classes=20, per_class=4, size=16)
        return ["--ways", 3, "--shots", 1, "--queries", 1]
    TinyShapes(data_dir=str(folder)).download_and_prepare()
    return ["--ways", 3, "--shots", 1, "--queries", 1, "--set", "data.tfds.image_key=picture",
            "--set", "data.tfds.label_key=kind", "--set", "data.tfds.split=[0.5,0.25,0.25]"]


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("dataset", [n for n, d in DATASETS.items() if d.paths])
def test_a_run_with_a_relative_data_dir_opens_from_another_directory(dataset, tmp_path,
                                                                     monkeypatch):
    name = f"{dataset}:tiny_shapes" if DATASETS[dataset].named else dataset
    work, elsewhere, run = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "run"
    work.mkdir()
    elsewhere.mkdir()
    extra = write_data(dataset, work / "data")
    monkeypatch.chdir(work)
    invoke("train", "--dataset", name, "--data-dir", "data", "--run-dir", run, *SMALL, *extra)
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"][dataset]
    for field in DATASETS[dataset].paths:
        assert not saved[field] or Path(saved[field]).is_absolute(), (field, saved[field])
    assert saved[DATASETS[dataset].paths[0]] == str(work / "data")
    monkeypatch.chdir(elsewhere)
    invoke("evaluate", run, "--tasks", 2, "--steps", 1)
    assert json.loads((run / "evaluation-test.json").read_text())["tasks"] == 2
    invoke("export", run, "--out", elsewhere / "models" / dataset)
    assert list((elsewhere / "models" / dataset).glob("*/saved_model.pb"))
    invoke("analyze", run, "--no-progress")
    assert (run / "landscape.csv").is_file()
    shutil.rmtree(work)   # nothing of the data is read from the working directory any more
