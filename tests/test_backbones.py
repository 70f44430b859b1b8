"""ResNet-12 and a keras.applications backbone end to end: trained through `tfmeta train`'s loop,
exported, and answered through TF Serving's session loader as in-process adaptation answers; with
support norm, one query alone as among many; a choice of what adapts that every door keeps."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import SessionModel, train_tiny
from tfmeta import config as config_lib, export, models
from tfmeta.adaptation import adapt
from tfmeta.models import query_outputs
from tfmeta.run import Run

pytestmark = pytest.mark.trains

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def resnet12_run(omniglot_dir, tmp_path_factory) -> Path:
    """A tiny ResNet-12 (widths 4, 8, 8, 16) on Omniglot with support norm."""
    return train_tiny(tmp_path_factory.mktemp("resnet12") / "run", "omniglot_5w1s-cpu",
                      f"data.omniglot.data_dir={omniglot_dir}", "model.arch=resnet12",
                      "model.widths=[4,8,8,16]", "model.norm=support", "train.meta_batch=2")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes") / "shapes"
    subprocess.run([sys.executable, str(EXAMPLES / "shapes_folder.py"), str(folder),
                    "--classes", "25", "--per-class", "8"], check=True)
    return folder


@pytest.fixture(scope="module")
def mobilenet_run(shapes, tmp_path_factory) -> Path:
    """MobileNetV3Small on the shapes at 32 x 32, only the head and the last block adapting."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the conversion's warning, checked in test_custom
        return train_tiny(tmp_path_factory.mktemp("mobilenet") / "run", "folder_mobilenet",
                          f"data.folder.data_dir={shapes}", "data.folder.image_size=[32,32]",
                          "train.meta_batch=2", "train.iterations=3", "adapt.steps=1",
                          "adapt.test_steps=1")


def adapted_in_process(run: Run, episode, steps: int) -> np.ndarray:
    params = [tf.convert_to_tensor(v) for v in run.eval_model.trainable_variables]
    adapted, _ = adapt(run.eval_model, params, episode.support, run.config.adapt, steps=steps)
    return query_outputs(run.eval_model, adapted, episode.support_x, episode.query_x).numpy()


def episode_of(run_dir: Path, split: str = "test"):
    run = Run.open(run_dir)
    run.restore(log=lambda _: None)
    return run, next(iter(run.source.episodes(split, 7, 1).unbatch()))


@pytest.mark.slow
def test_resnet12_answers_one_query_alone_as_among_75_through_tf_servings_loader(
        resnet12_run, tmp_path):
    version = export.export_run(resnet12_run, tmp_path / "models" / "resnet12")
    assert export.read_metadata(version)["query_independent"]
    run, episode = episode_of(resnet12_run)
    inputs = {"support_x": episode.support_x.numpy(), "support_y": episode.support_y.numpy(),
              "query_x": episode.query_x.numpy()}
    assert len(inputs["query_x"]) == 75
    session = SessionModel(version)
    try:
        together = session.run("adapt_predict", inputs)["logits"]
        np.testing.assert_allclose(together, adapted_in_process(run, episode,
                                                                run.config.adapt.eval_steps),
                                   atol=1e-5)
        for i in (0, 37, 74):
            alone = session.run("adapt_predict",
                                {**inputs, "query_x": inputs["query_x"][i:i + 1]})["logits"]
            np.testing.assert_allclose(alone, together[i:i + 1], rtol=0, atol=1e-6)
        # And the original files, in the dataset's own image format.
        from tfmeta.tasks.omniglot_files import file_tasks
        task = file_tasks(run.config.data.omniglot, 5, 1, 2, count=1, seed=5)[0]
        files = session.run("adapt_predict_images", {
            "support_images": np.array(task.support_png, object), "support_y": task.support_y,
            "query_images": np.array(task.query_png, object)})
        assert files["probabilities"].shape == (10, 5)
    finally:
        session.close()


@pytest.mark.slow
def test_a_mobilenet_backbone_run_exports_and_answers_its_folders_files(mobilenet_run, shapes,
                                                                       tmp_path):
    """The folder's PNG files through `adapt_predict_images` in TF Serving's loader give the
    answers that in-process adaptation gives the same images; one query per request gives the
    batched answer (support norm)."""
    from PIL import Image
    run, _ = episode_of(mobilenet_run)
    model = run.eval_model
    assert [layer.name for layer in model.adapted_layers()][0] == "head"
    assert all(name.startswith("expanded_conv_10_") for name in
               [layer.name for layer in model.adapted_layers()][1:])
    version = export.export_run(mobilenet_run, tmp_path / "models" / "mobilenet")
    classes = sorted(p.name for p in shapes.iterdir() if p.is_dir() and p.name[0] != ".")[:5]
    support = [(shapes / c / "000.png").read_bytes() for c in classes]
    query = [(shapes / c / "001.png").read_bytes() for c in classes]
    as_array = lambda files: np.stack([  # noqa: E731  as the folder source reads them
        run.source.image_format.from_pil(Image.open(__import__("io").BytesIO(f)))
        for f in files]).astype(np.float32) / 255.0
    episode = type("E", (), {})()
    episode.support_x, episode.query_x = tf.constant(as_array(support)), tf.constant(as_array(query))
    episode.support = (episode.support_x, tf.range(5, dtype=tf.int32))
    expected = adapted_in_process(run, episode, run.config.adapt.eval_steps)
    session = SessionModel(version)
    try:
        inputs = {"support_images": np.array(support, object),
                  "support_y": np.arange(5, dtype=np.int32),
                  "query_images": np.array(query, object)}
        together = session.run("adapt_predict_images", inputs)["logits"]
        # float32 through some fifty layers and a step that moves these untrained logits by about
        # a hundred: agreement to 1e-3 of their scale, where a wrong image or step is off by 10%.
        np.testing.assert_allclose(together, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
        alone = session.run("adapt_predict_images", {**inputs, "query_images": inputs[
            "query_images"][2:3]})["logits"]
        np.testing.assert_allclose(alone, together[2:3], rtol=0, atol=1e-5)
    finally:
        session.close()


def test_every_door_keeps_the_choice_of_what_adapts(tmp_path):
    """With model.adapt_layers=head, adaptation (training, evaluation, the landscape, the export)
    moves the head alone, and MetaLearner builds the same model."""
    from tfmeta import tasks
    from tfmeta.keras import MetaLearner
    config = config_lib.load("sine", ["model.adapt_layers=head", "model.frozen_layers=hidden1"])
    source = tasks.build(config.data)
    learner = MetaLearner.from_run_config(config, source)
    run = Run(config, tmp_path)
    for model in (learner.net, run.eval_model):
        names = [layer.name for layer in model.adapted_layers()]
        assert names == ["head"], names
        assert model.layer_names() == ["hidden2", "head"]   # hidden1 frozen: no parameter
    episode = next(iter(source.episodes("test", 0, 1).unbatch()))
    params = [tf.convert_to_tensor(v) for v in run.eval_model.trainable_variables]
    adapted, _ = adapt(run.eval_model, params, episode.support, config.adapt)
    named, before = models.parts(run.eval_model, adapted), models.parts(run.eval_model, params)
    for a, b in zip(named.features, before.features):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(named.head, before.head))
