"""Adapt once, predict many: an export's `adapt` returns the adapted task as one string, and
`predict_task` answers from it exactly as `adapt_predict` answers from the support set, through
`tf.saved_model.load` and TensorFlow Serving's session loader; a task of another export, cut
short or damaged is refused in one sentence."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import SessionModel
from tfmeta import adapted_task, export, models
from tfmeta.adaptation import adapt, adapt_task
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.model import ModelConfig
from tfmeta.models import InnerLoop
from tfmeta.tasks.image_format import ImageFormat

pytestmark = pytest.mark.trains

SHAPE, WAYS = (28, 28, 1), 5


def perturbed(model: models.MetaModel, seed: int = 0) -> models.MetaModel:
    """Weights away from their initial values, so that batch norm's gamma and beta matter."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v + rng.normal(0, 0.1, v.shape).astype(v.dtype))
    return model


def classifier(norm: str, inner: InnerLoop = InnerLoop(), arch: str = "conv4"):
    return perturbed(models.build(ModelConfig(arch=arch, filters=8, widths=[4, 8, 8, 8],
                                              norm=norm), SHAPE, WAYS, inner=inner))


def task_inputs(seed: int = 0, ways: int = WAYS, queries: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    return {"support_x": rng.random((ways, *SHAPE)).astype(np.float32),
            "support_y": np.arange(ways, dtype=np.int32),
            "query_x": rng.random((queries, *SHAPE)).astype(np.float32)}


CASES = {
    "maml, support norm": lambda: classifier("support"),
    "maml, transductive": lambda: classifier("transductive"),
    "anil": lambda: classifier("support", InnerLoop(head_only=True, adapt="head")),
    "maml++ per-step norms and rates": lambda: classifier("support", InnerLoop(
        learned_lr="layer_step", lr=0.4, steps=2, step_norms=True)),
    "resnet-12": lambda: classifier("support", arch="resnet12"),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    model = CASES[request.param]()
    version = export.export(model, AdaptConfig(steps=2, lr=0.4), tmp_path_factory.mktemp("m") /
                            "m", 2, {"ways": WAYS})
    return request.param, model, version


def test_statistics_kept_from_the_support_set_normalize_a_query_as_among_it():
    model = classifier("support")
    params = models.params_of(model)
    inputs = task_inputs()
    sx, qx = tf.constant(inputs["support_x"]), tf.constant(inputs["query_x"])
    statistics = models.support_statistics(model, params, sx)
    assert len(statistics) == 4   # conv4's four batch norms
    np.testing.assert_array_equal(models.outputs_given(model, params, statistics, qx),
                                  models.query_outputs(model, params, sx, qx))
    assert models.support_statistics(classifier("transductive"), params, sx) == []


def test_predict_task_of_adapt_is_adapt_predict_through_both_loaders(exported):
    name, model, version = exported
    inputs = task_inputs()
    support = {k: inputs[k] for k in ("support_x", "support_y")}
    loaded = tf.saved_model.load(str(version))
    expected = loaded.signatures["adapt_predict"](**{k: tf.constant(v) for k, v in
                                                     inputs.items()})["logits"].numpy()
    task = loaded.signatures["adapt"](**{k: tf.constant(v) for k, v in support.items()})
    task = task[adapted_task.NAME]
    assert task.shape == [] and task.dtype == tf.string
    got = loaded.signatures["predict_task"](task_bytes=task,
                                            query_x=tf.constant(inputs["query_x"]))
    np.testing.assert_allclose(got["logits"].numpy(), expected, atol=1e-5)
    session = SessionModel(version)
    try:
        # The loaders' graphs differ in float32 rounding (ResNet-12's by 4e-5): each is held
        # to its own adapt_predict, and a task from either serves in both.
        expected = session.run("adapt_predict", inputs)["logits"]
        served_task = session.run("adapt", support)[adapted_task.NAME]
        for kept, atol in ((served_task, 1e-5), (task.numpy(), 2e-4)):
            served = session.run("predict_task", {"task_bytes": kept,
                                                  "query_x": inputs["query_x"]})
            np.testing.assert_allclose(served["logits"], expected, atol=atol)
        if model.query_independent:   # one query alone, as among the others
            alone = session.run("predict_task", {"task_bytes": served_task,
                                                 "query_x": inputs["query_x"][2:3]})
            np.testing.assert_allclose(alone["logits"], expected[2:3], atol=1e-5)
    finally:
        session.close()
    assert len(task.numpy()) == export.read_metadata(version)["task_bytes"]


def test_fewer_classes_carry_over_into_the_task(exported):
    _, _, version = exported
    inputs = task_inputs(seed=1, ways=3)
    loaded = tf.saved_model.load(str(version))
    expected = loaded.signatures["adapt_predict"](**{k: tf.constant(v) for k, v in
                                                     inputs.items()})
    task = loaded.signatures["adapt"](support_x=tf.constant(inputs["support_x"]),
                                      support_y=tf.constant(inputs["support_y"]))
    got = loaded.signatures["predict_task"](task_bytes=task[adapted_task.NAME],
                                            query_x=tf.constant(inputs["query_x"]))
    np.testing.assert_allclose(got["probabilities"].numpy(), expected["probabilities"].numpy(),
                               atol=1e-6)
    assert np.all(got["probabilities"].numpy()[:, 3:] == 0)


def test_a_task_holds_only_what_the_inner_loop_changed(tmp_path):
    sizes = {}
    for name, inner in (("maml", InnerLoop()), ("anil", InnerLoop(head_only=True, adapt="head"))):
        model = classifier("transductive", inner)
        version = export.export(model, AdaptConfig(steps=1, lr=0.4), tmp_path / name, 1, {})
        sizes[name] = export.read_metadata(version)["task_bytes"]
        adapted = sum(int(np.prod(model.trainable_variables[i].shape))
                      for i in model.inner_indices)
        # 4 bytes a float32, a fixed header and the tensor's proto framing.
        assert adapted * 4 < sizes[name] < adapted * 4 + adapted_task.HEADER + 64
    head = 8 * 1 * 1 * WAYS + WAYS   # conv4 at 28 x 28 pools to 1 x 1 x 8
    assert sizes["anil"] < head * 4 + adapted_task.HEADER + 64 < sizes["maml"] / 5


def test_a_foreign_short_cut_or_damaged_task_is_refused_in_one_sentence(tmp_path):
    model = classifier("support")
    first = export.export(model, AdaptConfig(steps=1, lr=0.4), tmp_path / "m", 1, {})
    second = export.export(model, AdaptConfig(steps=1, lr=0.4), tmp_path / "m", 1, {})
    inputs = task_inputs()
    support = {k: inputs[k] for k in ("support_x", "support_y")}
    old = SessionModel(first)
    task = old.run("adapt", support)[adapted_task.NAME]
    old.close()
    other = export.read_metadata(first)["task_export_id"]
    this = export.read_metadata(second)["task_export_id"]
    length = len(task)
    flipped = bytearray(task)
    flipped[-9] ^= 1
    cases = {
        b"short": "task_bytes holds 5 bytes, too few to be a task; send the task_bytes an adapt "
                  "signature returned",
        b"x" * length: "task_bytes is not a task: it does not begin with 'tfmeta-task/1'; send "
                       "the task_bytes an adapt signature returned",
        task: f'task_bytes was adapted by another model or version (export "{other}"); this is '
              f"export {this}: adapt the support set again",
        task[:14] + this.encode() + task[30:-7]: f"task_bytes holds {length - 7} bytes, but a "
                                                 f"task of this model holds {length}: it was cut "
                                                 "short or padded",
        bytes(flipped[:14]) + this.encode() + bytes(flipped[30:]):
            "task_bytes is damaged: its content does not match its checksum",
    }
    session = SessionModel(second)
    try:
        fresh = session.run("adapt", support)[adapted_task.NAME]
        session.run("predict_task", {"task_bytes": fresh, "query_x": inputs["query_x"]})
        for bad, sentence in cases.items():
            with pytest.raises(tf.errors.InvalidArgumentError) as error:
                session.run("predict_task", {"task_bytes": bad, "query_x": inputs["query_x"]})
            assert f"[{sentence}]" in error.value.message.replace('\\"', '"').replace("\\'", "'")
    finally:
        session.close()


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_image_files_adapt_once_and_predict_as_adapt_predict_images(tmp_path):
    model = classifier("support")
    fmt = ImageFormat(height=28, width=28, channels=1, invert=True)
    version = export.export(model, AdaptConfig(steps=2, lr=0.4), tmp_path / "m", 2, {},
                            image_format=fmt)
    rng = np.random.default_rng(3)
    files = lambda n: np.array([png(rng.integers(0, 256, (28, 28), dtype=np.uint8))  # noqa
                                for _ in range(n)], object)
    support, labels, queries = files(WAYS), np.arange(WAYS, dtype=np.int32), files(4)
    session = SessionModel(version)
    try:
        expected = session.run("adapt_predict_images", {
            "support_images": support, "support_y": labels, "query_images": queries})
        task = session.run("adapt_images", {"support_images": support, "support_y": labels})
        for i in range(len(queries)):   # one query file per request
            got = session.run("predict_task_images", {"task_bytes": task[adapted_task.NAME],
                                                      "query_images": queries[i:i + 1]})
            np.testing.assert_allclose(got["logits"], expected["logits"][i:i + 1], atol=1e-5)
    finally:
        session.close()


@pytest.mark.parametrize("norm", ["support", "transductive"])
def test_adapt_task_answers_as_the_query_pass_after_adapt(norm):
    """In Python: `adapt_task` once, then `predict` per query, against `adapt` and
    `query_outputs` with the whole query set."""
    model = classifier(norm)
    config = AdaptConfig(steps=2, lr=0.4)
    inputs = task_inputs()
    sx, sy, qx = (tf.constant(inputs[k]) for k in ("support_x", "support_y", "query_x"))
    adapted, _ = adapt(model, models.params_of(model), (sx, sy), config,
                       steps=config.eval_steps)
    expected = models.query_outputs(model, adapted, sx, qx, config.eval_steps - 1).numpy()
    task = adapt_task(model, models.params_of(model), (inputs["support_x"], inputs["support_y"]),
                      config)
    np.testing.assert_allclose(task.predict(inputs["query_x"]), expected, atol=1e-5)
    if model.query_independent:
        np.testing.assert_allclose(task.predict(inputs["query_x"][3:4]), expected[3:4],
                                   atol=1e-5)


def test_a_meta_learner_adapts_once_and_predicts_with_the_forward_pass():
    from tfmeta import config as config_lib, tasks
    from tfmeta.keras import MetaLearner
    cfg = config_lib.load("sine-cpu")
    source = tasks.build(cfg.data)
    learner = MetaLearner.from_run_config(cfg, source)
    episode = next(iter(source.episodes("test", seed=0, meta_batch=1).unbatch()))
    task = learner.adapt((episode.support_x.numpy(), episode.support_y.numpy()))
    adapted, _ = adapt(learner.net, models.params_of(learner.net), episode.support,
                       cfg.adapt, steps=cfg.adapt.eval_steps)
    expected = models.query_outputs(learner.net, adapted, episode.support_x, episode.query_x)
    np.testing.assert_allclose(task.predict(episode.query_x), expected, atol=1e-6)
    assert task.predict(episode.query_x[:1]).shape == [1, 1]


def test_a_file_and_its_array_give_the_same_input_to_the_last_bit():
    """Every pixel level, decoded from a PNG inside a graph (where Grappler would turn / 255 into
    a multiply, 1 ulp off for 126 levels), equals the exact quotient k / 255 that the training
    pipeline gives."""
    from tfmeta.tasks.image_format import decode_images, unit_pixels
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    fmt = ImageFormat(height=16, width=16, channels=1)
    decoded = tf.function(lambda files: decode_images(files, fmt, "query_images", tf.float32))(
        tf.constant([png(levels)]))
    exact = levels.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(decoded.numpy()[0, ..., 0], exact)
    np.testing.assert_array_equal(tf.function(unit_pixels)(tf.constant(levels)).numpy(), exact)
    multiplied = tf.function(lambda x: tf.cast(x, tf.float32) / 255.0)(tf.constant(levels))
    assert np.sum(multiplied.numpy() != exact) > 0   # what the table is for


def test_predict_without_adaptation_uses_the_first_per_step_norm_row(tmp_path):
    """`predict` takes no inner step, so MAML++'s per-step batch norm answers with row 0, as
    evaluation scores a task after 0 steps; the last row's answer differs."""
    model = classifier("transductive", InnerLoop(learned_lr="layer_step", lr=0.4, steps=3,
                                                 step_norms=True))
    version = export.export(model, AdaptConfig(steps=3, lr=0.4), tmp_path / "m", 3, {})
    x = tf.constant(task_inputs()["query_x"])
    served = tf.saved_model.load(str(version)).signatures["predict"](x=x)["logits"].numpy()
    params = models.params_of(model)
    np.testing.assert_allclose(served, models.apply(model, params, x, step=0), atol=1e-5)
    assert np.abs(served - models.apply(model, params, x).numpy()).max() > 1e-3


def test_the_exports_checkpoint_is_absolute_whatever_the_working_directory(tiny_sine_run,
                                                                             tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tiny_sine_run.parent)
    version = export.export_run(tiny_sine_run.name, tmp_path / "sine", log=lambda _: None)
    checkpoint = export.read_metadata(version)["checkpoint"]
    assert checkpoint.startswith("/") and checkpoint.startswith(str(tiny_sine_run.resolve()))
