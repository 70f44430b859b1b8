"""The MAML meta-gradient against central finite differences, in float64.

The objective is F(theta) = L(D'; adapt(theta, D)). Its gradient must match finite differences of F
itself: comparing two autodiff paths with each other would not catch a layer whose second derivatives
are wrong (see test_stock_batch_norm_fails_the_same_check).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (directional_fd, dot, image_episode, params_of, random_direction, sine_episode,
                     tiny_mlp)
from tfmeta import models
from tfmeta.algorithms import maml
from tfmeta.config.adapt import AdaptConfig


def objective(model, episode, config):
    return lambda p: maml.task_objective(model, p, episode, config)[0]


def test_second_order_meta_gradient_matches_finite_differences():
    model, episode = tiny_mlp(), sine_episode()
    config = AdaptConfig(steps=2, lr=0.01)
    params = params_of(model)
    grads, _ = maml.task_gradient(model, params, episode, config)
    analytic = np.concatenate([g.numpy().ravel() for g in grads])
    f = objective(model, episode, config)
    numeric = []
    for i, p in enumerate(params):
        for j in range(int(np.prod(p.shape))):
            basis = [tf.zeros_like(q) for q in params]
            basis[i] = tf.reshape(tf.one_hot(j, int(np.prod(p.shape)), dtype=p.dtype), p.shape)
            numeric.append(directional_fd(f, params, basis, 1e-6))
    numeric = np.array(numeric)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) < 1e-3
    # It must also be the *second-order* gradient: first-order MAML differs measurably.
    first, _ = maml.task_gradient(model, params, episode, AdaptConfig(steps=2, lr=0.01,
                                                                      first_order=True))
    first = np.concatenate([g.numpy().ravel() for g in first])
    assert np.linalg.norm(first - numeric) / np.linalg.norm(numeric) > 1e-2


def conv4_directional_errors(norm_layer, norm="transductive"):
    tf.keras.utils.set_random_seed(0)
    model = models.conv4(5, (16, 16, 1), filters=4, dtype="float64", norm_layer=norm_layer,
                         norm=norm)
    episode = image_episode()
    config = AdaptConfig(steps=1, lr=0.4)
    params = params_of(model)
    grads, _ = maml.task_gradient(model, params, episode, config)
    errors = []
    for seed in range(3):
        v = random_direction(params, seed)
        numeric = directional_fd(objective(model, episode, config), params, v, 1e-8)
        errors.append(abs(dot(grads, v) - numeric) / abs(numeric))
    return errors


@pytest.mark.parametrize("norm", models.NORMS)
def test_conv4_with_batch_norm_matches_finite_differences(norm):
    """float64 and eps 1e-8: a larger step crosses ReLU and max-pool kinks, where the loss is not
    differentiable. With support norm the query loss also differentiates through the support
    statistics at the adapted weights."""
    assert max(conv4_directional_errors(models.BatchNorm, norm)) < 1e-5


def test_stock_batch_norm_fails_the_same_check():
    """Keras' BatchNormalization stops the gradient through the mean in its variance."""
    stock = lambda **kw: keras.layers.BatchNormalization(epsilon=1e-5, **kw)  # noqa: E731
    assert max(conv4_directional_errors(stock)) > 1e-3


def test_meta_gradient_is_the_mean_of_task_gradients():
    model = tiny_mlp()
    config = AdaptConfig(steps=1, lr=0.01)
    params = params_of(model)
    episodes = [sine_episode(s) for s in range(4)]
    batch = tf.nest.map_structure(lambda *t: tf.stack(t), *episodes)
    grads, metrics = maml.meta_gradient(model, params, batch, config, global_batch_size=4)
    per_task = [maml.task_gradient(model, params, e, config) for e in episodes]
    for k, g in enumerate(grads):
        np.testing.assert_allclose(g.numpy(), np.mean([t[0][k].numpy() for t in per_task], 0),
                                   rtol=1e-10)
    np.testing.assert_allclose(metrics["loss"].numpy(),
                               np.mean([t[1]["loss"].numpy() for t in per_task]), rtol=1e-10)
    # With two replicas each holding half the batch, the shares add up to the same mean.
    halves = [tf.nest.map_structure(lambda t: t[s], batch) for s in (slice(0, 2), slice(2, 4))]
    shares = [maml.meta_gradient(model, params, h, config, global_batch_size=4)[0]
              for h in halves]
    for k, g in enumerate(grads):
        np.testing.assert_allclose((shares[0][k] + shares[1][k]).numpy(), g.numpy(), rtol=1e-10)


def test_relu_after_max_pool_gives_the_values_and_meta_gradient_of_relu_before_it():
    """conv4 applies ReLU after its max-pool (a 4x smaller tensor). The textbook order, ReLU then
    max-pool, built from the same layers, gives the same query loss and second-order
    meta-gradient."""
    tf.keras.utils.set_random_seed(0)
    model = models.conv4(5, (16, 16, 1), filters=4, dtype="float64")
    layers = []
    for _ in range(4):
        layers += [keras.layers.Conv2D(4, 3, padding="same", use_bias=False, dtype="float64"),
                   models.BatchNorm(dtype="float64"), keras.layers.ReLU(dtype="float64"),
                   keras.layers.MaxPooling2D(2, dtype="float64")]
    textbook = models.MetaModel(keras.Sequential(layers + [keras.layers.Flatten(dtype="float64")]),
                                keras.layers.Dense(5, dtype="float64"), (16, 16, 1),
                                loss="cross_entropy")
    assert [type(a) for a in model.features.layers] != [type(b) for b in textbook.features.layers]
    episode, config = image_episode(), AdaptConfig(steps=2, lr=0.4)
    params = params_of(model)
    ours, ours_metrics = maml.task_gradient(model, params, episode, config)
    theirs, theirs_metrics = maml.task_gradient(textbook, params, episode, config)
    assert float(ours_metrics["loss"]) == pytest.approx(float(theirs_metrics["loss"]), rel=1e-12)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-14)
