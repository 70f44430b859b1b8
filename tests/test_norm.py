"""Batch norm modes: support statistics against a naive computation, query independence, and the
support set normalized exactly as before. The second-order exactness of both modes is checked
against finite differences in test_maml.py."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import image_episode, params_of
from tfmeta import models
from tfmeta.batch_norm import BatchNorm
from tfmeta.losses import query_metrics
from tfmeta.models import apply, joint_outputs, query_outputs


def test_reference_rows_normalize_every_row_with_the_first_rows_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (7, 4, 4, 3))
    layer = BatchNorm(dtype="float64")
    layer.build(x.shape)
    layer.gamma.assign(rng.normal(size=3))
    layer.beta.assign(rng.normal(size=3))
    k = 3
    mean = x[:k].mean(axis=(0, 1, 2))
    var = ((x[:k] - mean) ** 2).mean(axis=(0, 1, 2))
    naive = (x - mean) / np.sqrt(var + 1e-5) * layer.gamma.numpy() + layer.beta.numpy()
    np.testing.assert_allclose(layer(x, reference_rows=k).numpy(), naive, rtol=1e-12)
    whole = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(layer(x).numpy(), whole * layer.gamma.numpy()
                               + layer.beta.numpy(), rtol=1e-12)


def conv4(norm, dtype="float64", filters=4, size=16):
    tf.keras.utils.set_random_seed(1)
    return models.conv4(5, (size, size, 1), filters=filters, dtype=dtype, norm=norm)


def test_support_norm_answers_each_query_as_if_it_were_alone():
    episode = image_episode(queries=6)
    model = conv4("support")
    params = params_of(model)
    together = query_outputs(model, params, episode.support_x, episode.query_x).numpy()
    alone = np.concatenate([query_outputs(model, params, episode.support_x,
                                          episode.query_x[i:i + 1]).numpy()
                            for i in range(episode.query_x.shape[0])])
    np.testing.assert_allclose(alone, together, rtol=1e-12, atol=1e-12)
    # The same check fails for transductive norm, where each query set has its own statistics.
    transductive = conv4("transductive")
    together = query_outputs(transductive, params, episode.support_x, episode.query_x).numpy()
    alone = query_outputs(transductive, params, episode.support_x, episode.query_x[:1]).numpy()
    assert np.abs(alone - together[:1]).max() > 1e-3


def test_support_rows_are_normalized_exactly_as_a_support_pass():
    episode = image_episode()
    model = conv4("support")
    params = params_of(model)
    joint = joint_outputs(model, params, episode.support_x, episode.query_x).numpy()
    k = episode.support_x.shape[0]
    np.testing.assert_allclose(joint[:k], apply(model, params, episode.support_x).numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(joint[k:], query_outputs(
        model, params, episode.support_x, episode.query_x).numpy(), rtol=1e-12)
    # Transductive: NAL's multi-task batch D u D' shares one set of statistics.
    model = conv4("transductive")
    x = tf.concat([episode.support_x, episode.query_x], 0)
    np.testing.assert_array_equal(joint_outputs(model, params, episode.support_x,
                                                episode.query_x).numpy(),
                                  apply(model, params, x).numpy())


def test_query_metrics_follow_the_mode_and_models_without_batch_norm_ignore_it():
    episode = image_episode()
    losses = {norm: float(query_metrics(conv4(norm), params_of(conv4(norm)), episode)["loss"])
              for norm in models.NORMS}
    assert abs(losses["support"] - losses["transductive"]) > 1e-4
    mlp = models.mlp((8,), inputs=3, norm="support", dtype="float64")
    assert mlp.query_independent and not mlp.normalizes
    x = tf.random.stateless_normal([4, 3], [0, 1], dtype=tf.float64)
    np.testing.assert_array_equal(query_outputs(mlp, params_of(mlp), x[:2], x[2:]).numpy(),
                                  apply(mlp, params_of(mlp), x[2:]).numpy())


@pytest.mark.parametrize("norm, independent", [("transductive", False), ("support", True)])
def test_query_independent_property(norm, independent):
    assert conv4(norm).query_independent is independent


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        conv4("instance")
