"""`adapt.recompute`: the meta-gradient of recomputed inner steps is the stored one's, matches
finite differences, and its memory does not grow with the number of inner steps."""

import dataclasses
import gc
import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import (directional_fd, dot, image_episode, params_of, random_direction, sine_episode,
                     train_tiny)
from tfmeta import meta_batch, models, training
from tfmeta.algorithms import maml
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.train import TASK_MAPPINGS
from tfmeta.models import InnerLoop

CONFIG = AdaptConfig(steps=3, lr=0.3)
INNER = {"maml": InnerLoop(), "anil": InnerLoop(head_only=True),
         "meta-sgd": InnerLoop(learned_lr="element", lr=0.3),
         "maml++": InnerLoop(learned_lr="layer_step", lr=0.3, steps=2, step_norms=True)}


def conv4(inner=InnerLoop(), size=16, filters=4, dtype="float64"):
    tf.keras.utils.set_random_seed(0)
    return models.conv4(5, (size, size, 1), filters=filters, dtype=dtype, inner=inner)


def task_gradient(model, params, episode, config, weights=None, compiled=True):
    fn = lambda p: meta_batch.task_gradient(  # noqa: E731
        lambda q, e: maml.task_objective(model, q, e, config, weights), p, episode)
    return tf.function(fn)(params) if compiled else fn(params)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("name", list(INNER))
def test_recomputed_meta_gradient_equals_the_stored_one(name, first_order):
    """Compiled, the recomputed steps run as a while loop; T=3 exceeds MAML++'s 2 learned steps,
    so the last step reuses the last rates and batch-norm row."""
    model, episode = conv4(INNER[name]), image_episode(1)
    config = dataclasses.replace(CONFIG, first_order=first_order)
    params = params_of(model)
    stored, stored_metrics = task_gradient(model, params, episode, config, compiled=False)
    recompute = dataclasses.replace(config, recompute=True)
    for compiled in (True, False):
        grads, metrics = task_gradient(model, params, episode, recompute, compiled=compiled)
        for a, b in zip(stored, grads):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-13)
        for key, value in stored_metrics.items():
            assert float(metrics[key]) == pytest.approx(float(value), rel=1e-12)


def test_recompute_with_maml_plus_plus_multi_step_loss():
    """The multi-step loss observes every step, so the steps stay unrolled, each recomputed."""
    model, episode = conv4(INNER["maml++"]), image_episode(2)
    weights = tf.constant([0.2, 0.3, 0.5], tf.float64)
    params = params_of(model)
    stored, _ = task_gradient(model, params, episode, CONFIG, weights)
    grads, _ = task_gradient(model, params, episode, dataclasses.replace(CONFIG, recompute=True),
                             weights)
    for a, b in zip(stored, grads):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-13)


def test_recomputed_meta_gradient_matches_finite_differences():
    """Against differences of the objective itself, not of another autodiff path (float64,
    eps 1e-8 for conv4's kinks, as in test_maml)."""
    model, episode = conv4(), image_episode()
    config = AdaptConfig(steps=2, lr=0.4, recompute=True)
    params = params_of(model)
    grads, _ = task_gradient(model, params, episode, config)
    objective = tf.function(lambda p: maml.task_objective(model, p, episode, config)[0])
    for seed in range(3):
        v = random_direction(params, seed)
        numeric = directional_fd(objective, params, v, 1e-8)
        assert abs(dot(grads, v) - numeric) / abs(numeric) < 1e-5


def tensor_peak_bytes(steps: int, recompute: bool) -> int:
    """Peak bytes that TensorFlow's CPU allocator holds for one compiled second-order meta-step
    of a float32 conv4 on 28x28 images, over what it held before (at 16 filters the allocator's
    statistics miss the activations; at 64 they see them)."""
    model = conv4(size=28, filters=64, dtype="float32")
    config = AdaptConfig(steps=steps, lr=0.4, recompute=recompute)
    step = training.make_meta_step(model, tf.keras.optimizers.SGD(0.0), maml.meta_gradient,
                                   config, 1)
    batch = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype.is_floating else t,
                                  image_episode(size=28))
    batch = tf.nest.map_structure(lambda t: t[None], batch)
    step(batch)
    # The allocator's peak also counts whatever else is alive in the process when it is reset:
    # in a pytest worker, earlier tests' garbage once made it read 77 MB for 2 steps (23 MB
    # alone) against 58 MB for 8 (53 MB alone). So the step's own peak is the peak over what was
    # held at the reset, after a collection, and the least of three.
    peaks = []
    for _ in range(3):
        gc.collect()
        tf.config.experimental.reset_memory_stats("CPU:0")
        held = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(batch)
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - held)
    return min(peaks)


@pytest.mark.trains
def test_recompute_keeps_the_meta_step_memory_flat_in_the_inner_steps():
    """Stored steps keep every step's activations until the backward pass; recomputed ones keep
    the parameter trajectory (here 0.5 MB a step) and one step's activations."""
    stored = [tensor_peak_bytes(t, False) for t in (2, 8)]
    recomputed = [tensor_peak_bytes(t, True) for t in (2, 8)]
    assert stored[1] - stored[0] > 15 * 2**20
    assert recomputed[1] - recomputed[0] < 0.25 * (stored[1] - stored[0])
    assert recomputed[1] < stored[1] / 2


@pytest.mark.trains
def test_a_run_trains_with_recompute(tmp_path):
    run_dir = train_tiny(tmp_path, "sine-cpu", "adapt.recompute=true", "adapt.steps=2")
    last = json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(last["meta_train/loss"]) and np.isfinite(last["meta_test/mse"])


@pytest.mark.parametrize("mapping", TASK_MAPPINGS)
def test_recompute_under_every_task_mapping(mapping):
    """vectorized_map turns the recomputed while loop into a batched one."""
    tf.keras.utils.set_random_seed(0)
    model = models.mlp((8, 8), activation="tanh", dtype="float64")
    batch = tf.nest.map_structure(lambda *t: tf.stack(t), *[sine_episode(s) for s in range(3)])
    params = params_of(model)
    gradient = lambda config: tf.function(lambda p: maml.meta_gradient(  # noqa: E731
        model, p, batch, config, 3, mapping))(params)[0]
    stored = gradient(AdaptConfig(steps=3, lr=0.02))
    grads = gradient(AdaptConfig(steps=3, lr=0.02, recompute=True))
    for a, b in zip(stored, grads):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-13)
