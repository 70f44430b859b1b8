"""`adapt` against SGD written out by hand, and the first-order flag's Jacobian."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import params_of, sine_episode, tiny_mlp
from tfmeta import losses
from tfmeta.adaptation import adapt, displacement
from tfmeta.config.adapt import AdaptConfig


def manual_sgd(model, params, support, lr, steps):
    theta = [tf.Variable(p) for p in params]
    history = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = losses.task_loss(model, theta, *support)
        history.append(float(loss))
        for v, g in zip(theta, tape.gradient(loss, theta)):
            v.assign_sub(lr * g)
    return [v.numpy() for v in theta], history


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_adapt_is_sgd_on_the_support_set(steps):
    model, episode = tiny_mlp(), sine_episode()
    params = params_of(model)
    adapted, trajectory = adapt(model, params, episode.support, AdaptConfig(steps=steps, lr=0.01))
    expected, history = manual_sgd(model, params, episode.support, 0.01, steps)
    for a, e in zip(adapted, expected):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(trajectory.losses.numpy(), history, rtol=1e-12)
    for d, a, p in zip(displacement(adapted, trajectory), adapted, params):
        np.testing.assert_allclose(d.numpy(), a.numpy() - p.numpy(), atol=1e-15)


def test_adapt_leaves_the_model_untouched():
    model, episode = tiny_mlp(), sine_episode()
    before = [v.numpy().copy() for v in model.trainable_variables]
    adapt(model, params_of(model), episode.support, AdaptConfig(steps=2, lr=0.1))
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_observe_records_every_step():
    model, episode = tiny_mlp(), sine_episode()
    params = params_of(model)
    _, trajectory = adapt(model, params, episode.support, AdaptConfig(steps=3, lr=0.01),
                          observe=lambda p, t: losses.task_loss(model, p, *episode.query))
    assert trajectory.observations.shape == (4,)
    for t in range(4):
        theta, _ = adapt(model, params, episode.support, AdaptConfig(steps=t, lr=0.01))
        np.testing.assert_allclose(trajectory.observations[t].numpy(),
                                   losses.task_loss(model, theta, *episode.query).numpy(),
                                   rtol=1e-12)


def jacobian_of_adapted(first_order: bool):
    model, episode = tiny_mlp(hidden=(3,)), sine_episode()
    params = params_of(model)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        adapted, _ = adapt(model, params, episode.support,
                           AdaptConfig(steps=2, lr=0.05, first_order=first_order))
        flat = tf.concat([tf.reshape(a, [-1]) for a in adapted], 0)
    rows = tape.jacobian(flat, params)
    return np.concatenate([tf.reshape(r, [flat.shape[0], -1]).numpy() for r in rows], axis=1)


def test_first_order_drops_the_hessian_terms():
    first = jacobian_of_adapted(first_order=True)
    np.testing.assert_allclose(first, np.eye(first.shape[0]), atol=1e-14)
    second = jacobian_of_adapted(first_order=False)
    assert np.abs(second - np.eye(second.shape[0])).max() > 1e-3


def test_wormhole_gains_step_at_their_own_rate():
    from tfmeta import models
    tf.keras.utils.set_random_seed(0)
    model, episode = models.mlp((8,), dtype="float64", gains=True), sine_episode()
    params = params_of(model)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = losses.task_loss(model, params, *episode.support)
    grads = tape.gradient(loss, params)
    adapted, _ = adapt(model, params, episode.support,
                       AdaptConfig(steps=1, lr=0.01, gain_lr_scale=0.01))
    for k, (a, p, g) in enumerate(zip(adapted, params, grads)):
        rate = 1e-4 if k >= model.num_gated else 0.01
        np.testing.assert_allclose(a.numpy(), (p - rate * g).numpy(), rtol=1e-12, atol=1e-15)
    same, _ = adapt(model, params, episode.support,
                    AdaptConfig(steps=1, lr=0.01, gain_lr_scale=1))
    np.testing.assert_allclose(same[-1].numpy(), (params[-1] - 0.01 * grads[-1]).numpy(),
                               rtol=1e-12)
