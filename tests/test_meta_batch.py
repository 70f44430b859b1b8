"""The three task-mapping strategies compute the same sums and stacks."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import params_of, sine_episode, tiny_mlp
from tfmeta import meta_batch
from tfmeta.algorithms import maml
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.train import TASK_MAPPINGS


@pytest.fixture(scope="module")
def setup():
    model = tiny_mlp()
    batch = tf.nest.map_structure(lambda *t: tf.stack(t), *[sine_episode(s) for s in range(5)])
    return model, params_of(model), batch


@pytest.mark.parametrize("mapping", TASK_MAPPINGS)
def test_mappings_agree_on_second_order_meta_gradients(setup, mapping):
    model, params, batch = setup
    config = AdaptConfig(steps=2, lr=0.01)
    step = tf.function(lambda b: maml.meta_gradient(model, params, b, config, 5, mapping))
    grads, metrics = step(batch)
    per_task = [maml.task_gradient(model, params, tf.nest.map_structure(lambda t: t[i], batch),
                                   config) for i in range(5)]
    for k, g in enumerate(grads):
        np.testing.assert_allclose(g.numpy(), np.mean([t[0][k] for t in per_task], 0),
                                   rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["loss"], np.mean([t[1]["loss"] for t in per_task]),
                               rtol=1e-10)


@pytest.mark.parametrize("mapping", TASK_MAPPINGS)
def test_map_tasks_stacks_in_order(setup, mapping):
    _, _, batch = setup
    out = tf.function(lambda b: meta_batch.map_tasks(
        lambda e: {"first": e.support_y[0, 0], "sum": tf.reduce_sum(e.query_x)}, b, mapping))(batch)
    np.testing.assert_allclose(out["first"], batch.support_y[:, 0, 0])
    np.testing.assert_allclose(out["sum"], tf.reduce_sum(batch.query_x, axis=[1, 2]))
