"""Your own Keras model: stock normalization detected and made exact (same forward values, a
meta-gradient that passes the finite-difference check the stock one fails), stateful layers,
branches and bad heads refused, and a factory named by a dotted path."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import custom_models
from helpers import directional_fd, dot, image_episode, params_of, random_direction, sine_episode
from tfmeta import custom, models
from tfmeta.algorithms import maml
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.model import ModelConfig
from tfmeta.errors import ConfigError


def meta_gradient_errors(model: models.MetaModel, episode, config: AdaptConfig) -> list:
    """|<g, v> - FD along v| / |FD| of the second-order meta-gradient g, for 3 directions v."""
    params = params_of(model)
    grads, _ = maml.task_gradient(model, params, episode, config)
    objective = lambda p: maml.task_objective(model, p, episode, config)[0]  # noqa: E731
    errors = []
    for seed in range(3):
        v = random_direction(params, seed)
        numeric = directional_fd(objective, params, v, 1e-8)
        errors.append(abs(dot(grads, v) - numeric) / abs(numeric))
    return errors


def test_stock_batch_norm_is_found_and_dropout_refused():
    layers = custom.chain(custom_models.small_cnn((16, 16, 1), 5), (16, 16, 1))
    found = custom.findings(layers)
    assert [(f.kind, f.convertible) for f in found] == [("BatchNormalization", True)] * 2
    assert "stop_gradient(mean)" in found[0].why
    with pytest.raises(ConfigError, match=r"dropout \(Dropout\): draws new random numbers"):
        models.from_keras(custom_models.with_dropout((4,), 3), (4,), 3, "cross_entropy")
    with pytest.raises(ConfigError, match="(?s)norm layers are refused.*batch_normalization"):
        models.from_keras(custom_models.small_cnn((16, 16, 1), 5), (16, 16, 1), 5,
                          "cross_entropy", norm_layers="refuse")


def test_the_converted_copy_computes_the_same_values():
    keras.utils.set_random_seed(0)
    stock = custom_models.small_cnn((16, 16, 1), 5, "float64")
    # Weights away from their initial values, so that a dropped gamma or beta would show.
    for layer in stock.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(np.linspace(0.5, 1.5, 8))
            layer.beta.assign(np.linspace(-0.3, 0.3, 8))
    exact = models.exact_batch_norm(stock)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in exact.layers)
    x = tf.constant(np.random.default_rng(1).random((6, 16, 16, 1)))
    np.testing.assert_allclose(exact(x).numpy(), stock(x, training=True).numpy(), rtol=1e-10,
                               atol=1e-12)
    with pytest.warns(UserWarning, match="converted 2 stock normalization layers"):
        meta = models.from_keras(stock, (16, 16, 1), 5, "cross_entropy")
    np.testing.assert_allclose(models.apply(meta, params_of(meta), x).numpy(),
                               stock(x, training=True).numpy(), rtol=1e-10, atol=1e-12)


def test_converted_batch_norm_passes_the_finite_difference_check_the_stock_one_fails():
    config, episode = AdaptConfig(steps=1, lr=0.4), image_episode()
    keras.utils.set_random_seed(0)
    stock = custom_models.small_cnn((16, 16, 1), 5, "float64")
    kept = models.from_keras(stock, (16, 16, 1), 5, "cross_entropy", norm_layers="keep")
    with pytest.warns(UserWarning):
        exact = models.from_keras(stock, (16, 16, 1), 5, "cross_entropy")
    assert max(meta_gradient_errors(kept, episode, config)) > 1e-3
    assert max(meta_gradient_errors(exact, episode, config)) < 1e-5


def test_converted_layer_norm_passes_the_check_the_stock_one_fails():
    config, episode = AdaptConfig(steps=2, lr=0.05), sine_episode()
    keras.utils.set_random_seed(0)
    stock = custom_models.layer_norm_mlp((1,), 1)
    kept = models.from_keras(stock, (1,), 1, "mse", norm_layers="keep")
    with pytest.warns(UserWarning, match="LayerNormalization"):
        exact = models.from_keras(stock, (1,), 1, "mse")
    assert max(meta_gradient_errors(kept, episode, config)) > 1e-3
    assert max(meta_gradient_errors(exact, episode, config)) < 1e-5


def test_branches_and_heads_that_are_not_logits_are_refused():
    with pytest.raises(ConfigError, match="do not run one after another"):
        models.from_keras(custom_models.residual((4,), 3), (4,), 3, "cross_entropy")
    with pytest.raises(ConfigError, match=r"Dense\(3\) with no activation.*softmax"):
        models.from_keras(custom_models.softmax_head((4,), 3), (4,), 3, "cross_entropy")


def test_a_factory_named_by_its_dotted_path():
    config = ModelConfig(arch="custom", factory="custom_models:small_cnn")
    with pytest.warns(UserWarning, match="converted 2"):
        model = models.build(config, (16, 16, 3), 5)
    assert model.name == "small_cnn" and model.normalizes
    assert models.apply(model, params_of(model), tf.zeros([2, 16, 16, 3])).shape == [2, 5]
    for factory, message in (("custom_models", "package.module:function"),
                             ("no_such_module:f", "cannot import no_such_module"),
                             ("custom_models:nothing", "has no function nothing")):
        with pytest.raises(ConfigError, match=message):
            models.build(ModelConfig(arch="custom", factory=factory), (16, 16, 3), 5)


def test_a_norm_layer_over_another_axis_cannot_be_converted():
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.BatchNormalization(axis=1),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    (finding,) = custom.findings(custom.chain(model, (4, 4, 2)))
    assert not finding.convertible and "normalizes the last axis" in finding.why
    with pytest.raises(ConfigError, match="cannot convert"):
        models.from_keras(model, (4, 4, 2), 3, "cross_entropy")
