"""Meta-training end to end on sine: learning happens, resuming is exact, checkpoints survive."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib, training
from tfmeta.errors import DivergedError
from tfmeta.run import Run, evaluate_run

# Every test here trains a model or starts a process: the `trains` tier.
pytestmark = pytest.mark.trains


def sine_config(run_dir, *overrides):
    return config_lib.load("sine", [f"run_dir={run_dir}", "train.iterations=100",
                                    "train.eval_tasks=100", "train.epochs=3", *overrides])


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def weights(run_dir, checkpoint=None):
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    run.restore(checkpoint)
    return [v.numpy() for v in run.model.trainable_variables], run


def test_meta_training_lowers_the_meta_test_loss(tmp_path):
    run_dir = training.train(sine_config(tmp_path / "run"), progress=False, log=lambda _: None)
    records = history(run_dir)
    assert [r["iteration"] for r in records] == [100, 200, 300]
    # Before any meta-training, adapted query MSE on sine is about 3-4; 300 iterations halve it.
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    initial = run.evaluator(10, 100)()["mse"][:, 10].mean()
    assert records[-1]["meta_test/mse"] < 0.6 * initial
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "logs").iterdir())


def test_resume_continues_exactly(tmp_path):
    straight = training.train(sine_config(tmp_path / "straight"), progress=False,
                              log=lambda _: None)
    split = training.train(sine_config(tmp_path / "split", "train.epochs=1"), progress=False,
                           log=lambda _: None)
    training.train(sine_config(split), resume=True, progress=False, log=lambda _: None)
    (a, run_a), (b, run_b) = weights(straight), weights(split)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert int(run_b.optimizer.iterations.numpy()) == int(run_a.optimizer.iterations.numpy()) == 300
    assert [r["meta_test/mse"] for r in history(straight)] == [
        r["meta_test/mse"] for r in history(split)]


def test_steps_per_execution_gives_single_steps_weights_and_resumes_the_stream(tmp_path):
    """Epoch 1 at 7 steps per call (100 = 14 x 7 + 2), then resumed at 3 per call, against 300
    single steps: the same weights, Adam step count and per-epoch means."""
    straight = training.train(sine_config(tmp_path / "straight", "train.steps_per_execution=1"),
                              progress=False, log=lambda _: None)
    split = training.train(
        sine_config(tmp_path / "split", "train.epochs=1", "train.steps_per_execution=7"),
        progress=False, log=lambda _: None)
    training.train(sine_config(split, "train.steps_per_execution=3"), resume=True,
                   progress=False, log=lambda _: None)
    (a, _), (b, run_b) = weights(straight), weights(split)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert int(run_b.optimizer.iterations.numpy()) == 300
    for key in ("meta_train/loss", "meta_test/mse"):
        assert [r[key] for r in history(straight)] == [r[key] for r in history(split)]


def test_a_compiled_loop_stops_after_its_first_non_finite_step():
    """k = 4 steps per call over good, good, bad, good: three steps run, two update."""
    import keras

    from tfmeta import models
    from tfmeta.algorithms import maml
    from tfmeta.config.adapt import AdaptConfig
    from tfmeta.tasks.episode import Episode
    model = models.mlp((8,))
    optimizer = keras.optimizers.Adam(1e-3)
    step = training.make_meta_step(model, optimizer, maml.meta_gradient, AdaptConfig(), 2)
    x = np.ones([2, 4, 1], np.float32)
    episodes = [Episode(x, x, x, v * x) for v in (1.0, 2.0, np.nan, 3.0)]
    data = tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *a: np.stack(a), *episodes))
    metrics, finite = training.repeat(step, 4)(iter(data), 4)
    assert not finite and metrics["loss"].shape == (3,)
    assert np.isnan(float(metrics["loss"][2])) and int(optimizer.iterations.numpy()) == 2
    with pytest.raises(DivergedError, match="at iteration 3"):
        training.run_steps(training.repeat(step, 4), iter(data), 4)


@pytest.mark.parametrize("algorithm", ["maml", "wormhole", "finetune"])
def test_evaluate_reproduces_the_last_epochs_meta_test_score(tmp_path, algorithm):
    # A fresh process restores from the checkpoint alone, without the optimizer that also holds
    # the variables during training: every parameter (Wormhole's gains too) must be in it.
    run_dir = training.train(
        sine_config(tmp_path / "run", f"algorithm={algorithm}", "train.epochs=1",
                    "train.iterations=30", "train.eval_tasks=50", "adapt.test_steps=3"),
        progress=False, log=lambda _: None)
    result = evaluate_run(run_dir, 3, 50)
    assert result["steps"][3]["mse"]["mean"] == pytest.approx(
        history(run_dir)[-1]["meta_test/mse"], rel=1e-12)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = training.train(sine_config(tmp_path / "run", "train.epochs=1"), progress=False,
                             log=lambda _: None)
    good, _ = weights(run_dir)
    with pytest.raises(DivergedError, match="ckpt-1"):
        training.train(sine_config(run_dir, "adapt.lr=1e30"), resume=True, progress=False,
                       log=lambda _: None)
    after, run = weights(run_dir)
    assert run.manager.latest_checkpoint.endswith("ckpt-1")
    for x, y in zip(good, after):
        np.testing.assert_array_equal(x, y)


def test_a_non_finite_step_leaves_weights_and_adam_untouched():
    import keras

    from tfmeta import models
    from tfmeta.algorithms import maml
    from tfmeta.config.adapt import AdaptConfig
    from tfmeta.tasks.episode import Episode
    model = models.mlp((8,))
    optimizer = keras.optimizers.Adam(1e-3)
    step = training.make_meta_step(model, optimizer, maml.meta_gradient, AdaptConfig(), 2)
    x = tf.ones([2, 4, 1])
    bad = Episode(x, x, x, x * np.nan)
    before = [v.numpy().copy() for v in model.trainable_variables]
    metrics, finite = step(bad)
    assert not bool(finite) and np.isnan(float(metrics["loss"]))
    assert int(optimizer.iterations.numpy()) == 0
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_saved_config_holds_an_absolute_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_lib.load("omniglot_5w1s-cpu", ["data.omniglot.data_dir=data"])
    assert training.with_absolute_paths(config).data.omniglot.data_dir == str(tmp_path / "data")
    assert config.data.omniglot.data_dir == "data"
