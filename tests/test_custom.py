"""Your own Keras model, any graph: stock normalization detected at any depth and made exact (same
forward values in training mode, a meta-gradient that passes the finite-difference check the
stock one fails), for residual, nested, squeeze-and-excite and depthwise-separable models,
ResNet-12 and MobileNetV3Small; stateful layers refused one line each; a choice of what adapts
and what is frozen; pretrained weights; and a factory named by a dotted path."""

import re

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


def meta_gradient_errors(model: models.MetaModel, episode, config: AdaptConfig,
                         eps: float = 1e-8) -> list:
    """|<g, v> - FD along v| / |FD| of the second-order meta-gradient g, for 3 directions v."""
    params = params_of(model)
    grads, _ = maml.task_gradient(model, params, episode, config)
    objective = lambda p: maml.task_objective(model, p, episode, config)[0]  # noqa: E731
    errors = []
    for seed in range(3):
        v = random_direction(params, seed)
        numeric = directional_fd(objective, params, v, eps)
        errors.append(abs(dot(grads, v) - numeric) / abs(numeric))
    return errors


def test_stock_batch_norm_is_found_and_dropout_refused():
    found = custom.findings([custom_models.small_cnn((16, 16, 1), 5)])
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


def test_heads_that_are_not_logits_are_refused():
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
    (finding,) = custom.findings([model])
    assert not finding.convertible and "normalizes the last axis" in finding.why
    with pytest.raises(ConfigError, match="cannot convert"):
        models.from_keras(model, (4, 4, 2), 3, "cross_entropy")


# --- any graph --------------------------------------------------------------------------------

GRAPHS = {"residual": custom_models.residual, "nested": custom_models.nested,
          "squeeze-excite": custom_models.squeeze_excite, "separable": custom_models.separable,
          "resnet12": custom_models.stock_resnet12}


def perturbed(model: keras.Model) -> keras.Model:
    """`model` with every stock norm layer's gamma and beta away from 1 and 0, so that a dropped
    one would show."""
    for layer in custom.leaves(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.gamma.assign(np.linspace(0.5, 1.5, size))
            layer.beta.assign(np.linspace(-0.3, 0.3, size))
    return model


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_any_graph_converts_to_the_same_values_in_training_mode(name):
    keras.utils.set_random_seed(0)
    shape = (16, 16, 3) if name == "resnet12" else (8, 8, 3)   # ResNet-12 halves it 4 times
    stock = perturbed(GRAPHS[name](shape, 5, dtype="float64"))
    exact = models.exact_batch_norm(stock)
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in custom.leaves(exact))
    x = tf.constant(np.random.default_rng(1).random((6, *shape)))
    np.testing.assert_allclose(exact(x).numpy(), stock(x, training=True).numpy(), rtol=1e-10,
                               atol=1e-12)
    with pytest.warns(UserWarning, match="converted"):
        meta = models.from_keras(stock, shape, 5, "cross_entropy")
    np.testing.assert_allclose(models.apply(meta, params_of(meta), x).numpy(),
                               stock(x, training=True).numpy(), rtol=1e-10, atol=1e-12)


def test_mobilenet_v3_small_converts_to_the_same_values_in_training_mode():
    """keras.applications' backbone, nested in a Sequential: 34 BatchNormalization layers at
    depth 2 (this model used to be refused with one line listing moving_mean thirty times)."""
    keras.utils.set_random_seed(0)
    # keras.applications takes no dtype: its layers follow the global dtype policy (which, once
    # read, no longer follows floatx).
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        stock = perturbed(custom_models.mobilenet((32, 32, 3), 5))
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
    assert custom.leaves(stock)[-1].dtype_policy.name == "float64"
    with pytest.warns(UserWarning, match=r"converted 34 stock normalization layers .*conv_bn \(BatchNormalization\)"):
        meta = models.from_keras(stock, (32, 32, 3), 5, "cross_entropy")
    x = tf.constant(np.random.default_rng(1).random((4, 32, 32, 3)))
    np.testing.assert_allclose(models.apply(meta, params_of(meta), x).numpy(),
                               stock(x, training=True).numpy(), rtol=1e-8, atol=1e-10)


def test_a_refused_layer_inside_a_backbone_is_named_once_with_its_fix():
    with pytest.raises(ConfigError) as error:
        models.from_keras(custom_models.mobilenet_top((32, 32, 3), 4), (32, 32, 3), 4,
                          "cross_entropy")
    lines = str(error.value).splitlines()
    assert lines[0] == "model mobilenet_top: these layers break exact adaptation:"
    assert len(lines) == 2 and re.match(r"  dropout(_\d+)? \(Dropout\): draws new random "
                                        "numbers", lines[1]), lines
    assert "include_top=False drops it" in lines[1]


def episode32():
    return image_episode(size=8, channels=3)


# Central differences at eps 1e-6 on these float64 graphs: at 1e-8 rounding alone reaches 1e-5
# (measured on `nested`: 8e-7 to 1.4e-5), at 1e-5..1e-6 the exact meta-gradient matches to 1e-9..1e-7
# and the stock layers' is 0.3 to 2.2 off.
FD_EPS = 1e-6


@pytest.mark.parametrize("name", ["residual", "nested", "squeeze-excite", "separable"])
def test_second_order_meta_gradient_of_any_graph_matches_finite_differences(name):
    config = AdaptConfig(steps=1, lr=0.4)
    keras.utils.set_random_seed(0)
    stock = perturbed(GRAPHS[name]((8, 8, 3), 5, dtype="float64"))
    with pytest.warns(UserWarning):
        meta = models.from_keras(stock, (8, 8, 3), 5, "cross_entropy")
    assert max(meta_gradient_errors(meta, episode32(), config, FD_EPS)) < 1e-5
    kept = models.from_keras(stock, (8, 8, 3), 5, "cross_entropy", norm_layers="keep")
    assert max(meta_gradient_errors(kept, episode32(), config, FD_EPS)) > 1e-3


@pytest.mark.parametrize("adapt, frozen", [("head", ()), ("all", ("conv_a", "norm_*"))])
def test_the_head_alone_or_a_frozen_backbone_matches_finite_differences(adapt, frozen):
    """Only the head adapting (ANIL for any model), and a frozen backbone: the meta-gradient of
    what meta-trains matches finite differences, and a frozen parameter is not a parameter (it
    has no meta-gradient) and does not move in a meta-step."""
    from tfmeta import training
    keras.utils.set_random_seed(0)
    with pytest.warns(UserWarning):
        meta = models.from_keras(perturbed(custom_models.residual((8, 8, 3), 5, "float64")),
                                 (8, 8, 3), 5, "cross_entropy",
                                 inner=models.InnerLoop(adapt=adapt, frozen=frozen))
    adapted = [layer.name for layer in meta.adapted_layers()]
    assert adapted == (["head"] if adapt == "head" else ["conv_b", "head"])
    assert max(meta_gradient_errors(meta, episode32(), AdaptConfig(steps=1, lr=0.4),
                                    FD_EPS)) < 1e-5
    held = {v.path: v.numpy() for v in meta.non_trainable_variables}
    assert bool(frozen) == bool(held)
    step = training.make_meta_step(meta, keras.optimizers.Adam(0.1), maml.meta_gradient,
                                   AdaptConfig(steps=1, lr=0.4), 1)
    before = [v.numpy() for v in meta.trainable_variables]
    step(tf.nest.map_structure(lambda t: t[None], episode32()))
    assert all(np.array_equal(v.numpy(), held[v.path]) for v in meta.non_trainable_variables)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, meta.trainable_variables))


def test_layers_are_chosen_by_name():
    keras.utils.set_random_seed(0)
    model = models.resnet12(5, (16, 16, 3), (4, 4, 8, 8),
                            inner=models.InnerLoop(adapt="last:3"))
    assert [layer.name for layer in model.adapted_layers()] == [
        "block4_bn3", "block4_shortcut_bn", "head"]
    block4 = models.resnet12(5, (16, 16, 3), (4, 4, 8, 8),
                             inner=models.InnerLoop(adapt="head,block4_*"))
    names = [layer.name for layer in block4.adapted_layers()]
    assert names[0] == "head" and all(n.startswith("block4_") for n in names[1:])
    assert len(names) == 1 + 8   # 3 convs, 3 norms, the shortcut and its norm
    frozen = models.resnet12(5, (16, 16, 3), (4, 4, 8, 8),
                             inner=models.InnerLoop(frozen=("block1_*", "block2_*")))
    assert not any(n.startswith(("block1_", "block2_")) for n in frozen.layer_names())
    with pytest.raises(ConfigError, match=r"pattern 'blok4_\*' names no layer .*block1_conv1"):
        models.resnet12(5, (16, 16, 3), (4, 4, 8, 8), inner=models.InnerLoop(adapt="blok4_*"))
    with pytest.raises(ConfigError, match="the inner loop adapts no parameter"):
        models.resnet12(5, (16, 16, 3), (4, 4, 8, 8),
                        inner=models.InnerLoop(adapt="head", frozen=("head",)))


def test_pretrained_weights_are_loaded_before_conversion(tmp_path):
    keras.utils.set_random_seed(3)
    saved = custom_models.small_cnn((16, 16, 3), 5)
    perturbed(saved)
    saved.save_weights(str(tmp_path / "small.weights.h5"))
    saved.save(str(tmp_path / "small.keras"))
    keras.utils.set_random_seed(4)   # the factory's own weights differ
    for path in (tmp_path / "small.weights.h5", tmp_path / "small.keras"):
        config = ModelConfig(arch="custom", factory="custom_models:small_cnn", weights=str(path))
        with pytest.warns(UserWarning):
            model = models.build(config, (16, 16, 3), 5)
        x = tf.constant(np.random.default_rng(1).random((4, 16, 16, 3)), tf.float32)
        np.testing.assert_allclose(models.apply(model, params_of(model), x).numpy(),
                                   saved(x, training=True).numpy(), rtol=1e-5, atol=1e-6)
    config = ModelConfig(arch="custom", factory="custom_models:residual",
                         weights=str(tmp_path / "small.weights.h5"))
    with pytest.raises(ConfigError, match=r"model.weights .*small.weights.h5.* cannot be loaded"):
        models.build(config, (16, 16, 3), 5)
