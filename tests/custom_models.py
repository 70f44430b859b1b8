"""Keras models a user might bring, named by dotted path in the custom-model tests
(`model.factory: custom_models:FUNCTION`): each is called as FUNCTION(input_shape, outputs)."""

import keras


def small_cnn(input_shape, outputs, dtype="float32"):
    """Two conv blocks with stock BatchNormalization, as Keras examples write them."""
    return keras.Sequential([
        keras.Input(input_shape, dtype=dtype),
        keras.layers.Conv2D(8, 3, padding="same", dtype=dtype),
        keras.layers.BatchNormalization(dtype=dtype),
        keras.layers.ReLU(dtype=dtype),
        keras.layers.MaxPooling2D(2, dtype=dtype),
        keras.layers.Conv2D(8, 3, padding="same", dtype=dtype),
        keras.layers.BatchNormalization(dtype=dtype),
        keras.layers.ReLU(dtype=dtype),
        keras.layers.GlobalAveragePooling2D(dtype=dtype),
        keras.layers.Dense(outputs, dtype=dtype),
    ], name="small_cnn")


def small_cnn64(input_shape, outputs):
    return small_cnn(input_shape, outputs, "float64")


def layer_norm_mlp(input_shape, outputs, dtype="float64"):
    """A functional chain with a stock LayerNormalization."""
    x = keras.Input(input_shape, dtype=dtype)
    h = keras.layers.Dense(8, activation="tanh", dtype=dtype)(x)
    h = keras.layers.LayerNormalization(dtype=dtype)(h)
    h = keras.layers.Dense(8, activation="tanh", dtype=dtype)(h)
    return keras.Model(x, keras.layers.Dense(outputs, dtype=dtype)(h), name="ln_mlp")


def with_dropout(input_shape, outputs):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5),
                             keras.layers.Dense(outputs)], name="with_dropout")


def residual(input_shape, outputs):
    x = keras.Input(input_shape)
    h = keras.layers.Flatten()(x)
    h = keras.layers.Dense(16)(h)
    h = keras.layers.Add()([h, keras.layers.Dense(16)(h)])
    return keras.Model(x, keras.layers.Dense(outputs)(h), name="residual")


def softmax_head(input_shape, outputs):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(outputs, activation="softmax")], name="softmax")
