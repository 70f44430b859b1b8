"""The Keras face (`tfmeta.keras`) against tfmeta's own machinery: `fit` against the command
line's meta-step for every episodic algorithm, several steps per compiled call against single
steps, `evaluate` against `evaluation`, a BackupAndRestore restart against an uninterrupted run,
the landscape callback against `Landscape`, a saved learner against `Run` and the export, and
MirroredStrategy against one device."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import algorithms, config as config_lib, evaluation, tasks
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.errors import ConfigError, DivergedError
from tfmeta.keras import LandscapeMetrics, MetaLearner
from tfmeta.landscape import METRICS, Landscape
from tfmeta.run import Run
from tfmeta.training import MetaSteps

# Each test meta-trains through `fit`: the `trains` tier (the mirrored one: `slow`).
pytestmark = pytest.mark.trains

EPISODIC = [name for name, a in algorithms.REGISTRY.items() if not a.supervised]
OPTIONS = {"maml-reg": ["algorithms.maml_reg.gamma=0.05"]}


def sine_config(algorithm: str, *overrides: str):
    return config_lib.load("sine", [f"algorithm={algorithm}", "train.meta_batch=4",
                                    "adapt.steps=2", *OPTIONS.get(algorithm, []), *overrides])


def learner_and_run(config, tmp_path):
    source = tasks.build(config.data, config.model.dtype)
    learner = MetaLearner.from_run_config(config, source)
    learner.compile(optimizer=keras.optimizers.Adam(config.train.meta_lr))
    return learner, Run(config, tmp_path), source


def largest_difference(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.abs(x.numpy() - y.numpy()).max())
               for x, y in zip(a.trainable_variables, b.trainable_variables, strict=True))


CASES = {**{name: (name,) for name in algorithms.REGISTRY},
         # derivative-order annealing: epoch 0 (one meta-step) first order, then second order
         "maml-annealed": ("maml", "algorithms.maml.first_order_epochs=1", "train.iterations=1")}


@pytest.mark.parametrize("case", CASES)
def test_fit_takes_the_command_lines_meta_steps(case, tmp_path):
    """Two meta-steps through `fit` and through `training.MetaSteps` from the same seed, for
    every algorithm (the finetune baseline on its minibatches) and for annealing."""
    config = sine_config(*CASES[case])
    learner, run, source = learner_and_run(config, tmp_path)
    assert largest_difference(learner.net, run.model) == 0.0    # the same initial weights
    batches = run.training_batches(0).take(2)
    history = learner.fit(batches, epochs=1, verbose=0)
    steps = MetaSteps.of_run(run)
    for i, batch in enumerate(batches):
        steps.step(i // config.train.iterations)(batch)
    assert largest_difference(learner.net, run.model) < 1e-6, case
    logged = set(history.history)
    if case in ("maml", "maml-annealed", "anil"):
        assert "support_loss_before_adaptation" in logged, logged
    if case == "gradient-agreement":
        assert {"task_weights_min", "task_weights_max"} <= logged, logged


def test_a_non_finite_meta_step_under_fit_changes_nothing_and_stops(tmp_path):
    """A meta-batch whose query targets are NaN, second of three: the first step updates, the
    second leaves the weights and Adam's moments as they were and raises DivergedError, as the
    command line stops; the third never runs."""
    config = sine_config("maml")
    learner, _, source = learner_and_run(config, tmp_path)
    good = list(source.episodes("train", 0, 4).take(3))
    bad = good[1]._replace(query_y=good[1].query_y * np.nan)
    data = tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(
        lambda *a: tf.stack(a), *[good[0], bad, good[2]]))
    state = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            state["weights"] = [v.numpy().copy() for v in learner.net.trainable_variables]
            state["adam"] = [v.numpy().copy() for v in learner.optimizer.variables]

    with pytest.raises(DivergedError, match="meta-loss became nan at iteration 2; that step "
                                            "changed nothing"):
        learner.fit(data, epochs=1, verbose=0, callbacks=[Snapshot()])
    assert int(learner.optimizer.iterations.numpy()) == 1
    for before, after in zip(state["weights"], learner.net.trainable_variables, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    for before, after in zip(state["adam"], learner.optimizer.variables, strict=True):
        np.testing.assert_array_equal(before, after.numpy())


def test_steps_per_execution_gives_the_weights_of_single_steps(tmp_path):
    config = sine_config("maml")
    weights = []
    losses = []
    for k in (1, 3):
        learner, _, source = learner_and_run(config, tmp_path / str(k))
        learner.compile(optimizer=keras.optimizers.Adam(config.train.meta_lr),
                        steps_per_execution=k)
        # 7 = 3 + 3 + 1: the dataset ends inside the third call, which runs its one step.
        history = learner.fit(source.episodes("train", 0, 4).take(7), epochs=1, verbose=0)
        weights.append([v.numpy() for v in learner.net.trainable_variables])
        losses.append(history.history["loss"][0])
        assert int(learner.optimizer.iterations.numpy()) == 7
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)   # the mean over all 7 steps


def test_evaluate_scores_as_tfmeta_evaluates_and_fit_lowers_it(tmp_path):
    """`evaluate` against `evaluation.make_evaluator` on the same 100 held-out tasks: the mean
    query MSE after the test steps; and 1,000 meta-steps, 50 per compiled call, lower it."""
    config = sine_config("maml")
    learner, _, source = learner_and_run(config, tmp_path)
    steps = config.adapt.eval_steps

    def both() -> tuple:
        keras_face = learner.evaluate(source.episodes("test", 1, 10, count=100), verbose=0,
                                      return_dict=True)["loss"]
        own = evaluation.make_evaluator(learner.net, source, config.adapt, steps, 100, 1, 10)()
        return keras_face, float(own["mse"][:, steps].mean())

    before, truth = both()
    assert before == pytest.approx(truth, rel=1e-5)
    learner.compile(optimizer=keras.optimizers.Adam(config.train.meta_lr), steps_per_execution=50)
    learner.fit(source.episodes("train", 0, 4).take(1000), epochs=1, verbose=0)
    after, truth = both()
    assert after == pytest.approx(truth, rel=1e-5)
    assert after < 0.5 * before, (before, after)


def test_what_the_learner_cannot_honour_is_refused_in_one_sentence(tmp_path):
    """Each Keras call the learner cannot honour, and each network it cannot meta-train, is
    refused with a sentence that names the supported path."""
    from tfmeta import models
    config = sine_config("maml")
    learner, _, source = learner_and_run(config, tmp_path)
    saved = ("a MetaLearner is saved as a run directory, not as a Keras file, because its "
             "MetaModel and inner loop are not Keras-serializable: use learner.save_run(DIR)")
    for call in (learner.get_config, lambda: learner.save(str(tmp_path / "m.keras")),
                 lambda: keras.models.clone_model(learner),
                 lambda: MetaLearner.from_config({}),
                 lambda: learner.fit(learner.episodes(source), epochs=1, steps_per_epoch=1,
                                     verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(
                                         str(tmp_path / "c.keras"))])):
        with pytest.raises(ConfigError, match=re.escape(saved)):
            call()
    with pytest.raises(ConfigError, match=re.escape("learner.save_run(DIR), then tfmeta export")):
        learner.export(str(tmp_path / "exported"))
    for name, value in (("loss", "mse"), ("metrics", ["mae"])):
        with pytest.raises(ConfigError, match=f"MetaLearner.compile takes no {name}: the "
                                              "objective is the algorithm's"):
            learner.compile(optimizer="adam", **{name: value})
    for name in ("class_weight", "sample_weight"):
        with pytest.raises(ConfigError, match=f"MetaLearner.fit takes no {name}"):
            learner.fit(learner.episodes(source), epochs=1, steps_per_epoch=1, verbose=0,
                        **{name: {0: 1.0} if name == "class_weight" else np.ones(4)})
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ConfigError, match="does not meta-train in mixed precision .the "
                                              "global policy is mixed_float16."):
            MetaLearner(learner.net).compile(optimizer="adam")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    plain = keras.Sequential([keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
                              keras.layers.Dense(1)], name="plain")
    with pytest.raises(ConfigError, match="takes a tfmeta MetaModel, got the Sequential 'plain': "
                                          "convert it with tfmeta.models.from_keras"):
        MetaLearner(plain)
    converted = models.from_keras(plain, (1,), 1, "mse")
    for algorithm, what in (("anil", "anil adapts the head only"),
                            ("meta-sgd", "meta-sgd learns a rate per parameter element"),
                            ("wormhole", "wormhole meta-learns a gain per parameter tensor")):
        with pytest.raises(ConfigError, match=f"MetaLearner: {what}, but model plain's inner "
                                              "loop does not"):
            MetaLearner(converted, algorithm)
    with pytest.raises(ConfigError, match="finetune trains one wide head on minibatches"):
        MetaLearner(converted, "finetune")
    with pytest.raises(ConfigError, match="algorithm must be one of maml, anil.*got 'reptile'"):
        MetaLearner(converted, "reptile")
    with pytest.raises(ConfigError, match="mapping must be one of loop, map, vectorized"):
        MetaLearner(converted, mapping="vmap")


class _Kill(keras.callbacks.Callback):
    """Stops training with an error at (epoch, batch), as a killed process would."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("killed")


def test_backup_and_restore_continues_the_uninterrupted_stream(tmp_path):
    """3 epochs of 5 meta-steps at once, against a run killed in its third epoch and restarted
    by a fresh process's learner from the BackupAndRestore of its second: the same weights."""
    config = sine_config("maml")

    def fit(run: str, *callbacks):
        learner, _, source = learner_and_run(config, tmp_path / run)
        learner.fit(learner.episodes(source, "train", seed=0, meta_batch=4), epochs=3,
                    steps_per_epoch=5, verbose=0, callbacks=list(callbacks))
        return learner

    whole = fit("whole")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(KeyboardInterrupt):
        fit("killed", backup, _Kill(2, 3))
    resumed = fit("resumed", keras.callbacks.BackupAndRestore(str(tmp_path / "backup")))
    assert int(resumed.optimizer.iterations) == 15
    assert largest_difference(resumed.net, whole.net) < 1e-6
    # Without the learner's stream, a restart would replay episode 0 on: a different run.
    source = tasks.build(config.data, config.model.dtype)
    first = next(iter(whole.episodes(source, "train", seed=0, meta_batch=4)))
    np.testing.assert_array_equal(first.support_x.numpy(),
                                  next(iter(source.episodes("train", 0, 4))).support_x.numpy())


def test_the_landscape_callback_logs_the_metrics_of_the_learners_weights(tmp_path):
    """Two epochs with TensorBoard listed before `LandscapeMetrics`: History holds every
    landscape metric per epoch, the last equal to a fresh `landscape.Landscape` at the final
    weights, and the TensorBoard event file holds their tags (the order does not matter)."""
    config = sine_config("maml")
    protocol = LandscapeConfig(flatness_tasks=2, coherence_tasks=20, max_iters=20, batch=10)
    learner, _, source = learner_and_run(config, tmp_path)
    history = learner.fit(learner.episodes(source, meta_batch=4), epochs=2, steps_per_epoch=5,
                          verbose=0, callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "tb")),
                                                LandscapeMetrics(source, protocol)])
    truth = Landscape(learner.net, source, config.adapt, protocol, learner.mapping).measure(
        progress=False)
    for metric in METRICS:
        values = history.history[f"landscape/{metric}"]
        assert len(values) == 2 and np.isfinite(values).all(), metric
        assert values[-1] == pytest.approx(float(truth[metric]), rel=1e-4), metric
    tags = set()
    for event_file in (tmp_path / "tb" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {value.tag for value in event.summary.value}
    assert {f"epoch_landscape/{m}" for m in METRICS} <= tags, tags


def test_a_saved_learner_is_a_run_that_evaluates_and_exports(tmp_path):
    """`save_run` writes what `tfmeta train` would: `Run.open` restores the learner's weights and
    meta-step, and the export's `adapt_predict` answers as the learner adapts in process."""
    from tfmeta import export
    from tfmeta.adaptation import adapt
    from tfmeta.models import params_of, query_outputs
    config = sine_config("maml")
    learner, _, source = learner_and_run(config, tmp_path / "scratch")
    learner.fit(learner.episodes(source, meta_batch=4), epochs=1, steps_per_epoch=7, verbose=0)
    assert learner.save_run(tmp_path / "run") == tmp_path / "run"
    run = Run.open(tmp_path / "run")
    run.restore()
    assert int(run.iteration) == 7 and int(run.optimizer.iterations) == 7
    assert largest_difference(run.model, learner.net) == 0.0
    version = export.export_run(tmp_path / "run", tmp_path / "models" / "sine")
    episode = next(iter(source.episodes("test", 3, 1).unbatch()))
    served = tf.saved_model.load(str(version)).signatures["adapt_predict"](
        support_x=episode.support_x, support_y=episode.support_y,
        query_x=episode.query_x)["predictions"].numpy()
    adapted, _ = adapt(learner.net, params_of(learner.net), episode.support, config.adapt,
                       steps=config.adapt.eval_steps)
    expected = query_outputs(learner.net, adapted, episode.support_x, episode.query_x).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="MetaLearner.from_run_config"):
        MetaLearner(learner.net).save_run(tmp_path / "other")


@pytest.mark.slow
def test_mirrored_on_two_devices_equals_one_device_for_every_algorithm():
    """`fit` in a MirroredStrategy scope over 2 logical CPU devices (each replica half of the
    meta-batch) against one device: 3 meta-steps of each episodic algorithm, and of MAML with 3
    steps per compiled call, the same weights and the same logged loss (a fresh process, since
    logical devices must exist before TensorFlow starts)."""
    script = Path(__file__).resolve().parent / "keras_mirrored.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {line["algorithm"] for line in lines} == set(EPISODIC)
    assert any(line["steps_per_execution"] == 3 for line in lines)
    for line in lines:
        assert line["largest_difference"] < 1e-6, line
        # The logged train loss is the global meta-batch's mean, not one replica's share.
        assert line["mirrored_loss"] == pytest.approx(line["loss"], rel=1e-5), line
