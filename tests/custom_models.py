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


def softmax_head(input_shape, outputs):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(outputs, activation="softmax")], name="softmax")


def residual(input_shape, outputs, dtype="float32"):
    """A residual block: conv, stock BatchNormalization, ReLU, conv, added back onto the input;
    global average pooling and the head."""
    x = keras.Input(input_shape, dtype=dtype)
    h = keras.layers.Conv2D(4, 3, padding="same", dtype=dtype, name="conv_a")(x)
    h = keras.layers.BatchNormalization(dtype=dtype, name="norm_a")(h)
    h = keras.layers.ReLU(dtype=dtype)(h)
    h = keras.layers.Conv2D(input_shape[-1], 3, padding="same", dtype=dtype, name="conv_b")(h)
    h = keras.layers.Add(dtype=dtype)([h, x])
    h = keras.layers.GlobalAveragePooling2D(dtype=dtype)(h)
    return keras.Model(x, keras.layers.Dense(outputs, dtype=dtype, name="head")(h),
                       name="residual")


def nested(input_shape, outputs, dtype="float32"):
    """A backbone model inside a Sequential, as one writes a keras.applications backbone."""
    x = keras.Input(input_shape, dtype=dtype)
    h = keras.layers.Conv2D(4, 3, padding="same", dtype=dtype, name="stem")(x)
    h = keras.layers.BatchNormalization(dtype=dtype, name="stem_bn")(h)
    h = keras.layers.ReLU(dtype=dtype)(h)
    h = keras.layers.Concatenate(dtype=dtype)([h, x])
    h = keras.layers.GlobalAveragePooling2D(dtype=dtype)(h)
    backbone = keras.Model(x, h, name="backbone")
    return keras.Sequential([keras.Input(input_shape, dtype=dtype), backbone,
                             keras.layers.Dense(outputs, dtype=dtype, name="head")], name="nested")


def squeeze_excite(input_shape, outputs, dtype="float32"):
    """A squeeze-and-excite block (as in MobileNetV3): channel gates from the pooled features,
    multiplied back onto them; hard_swish activations."""
    x = keras.Input(input_shape, dtype=dtype)
    h = keras.layers.Conv2D(6, 3, padding="same", dtype=dtype)(x)
    h = keras.layers.BatchNormalization(dtype=dtype)(h)
    h = keras.layers.Activation("hard_swish", dtype=dtype)(h)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True, dtype=dtype)(h)
    gate = keras.layers.Conv2D(3, 1, activation="relu", dtype=dtype)(gate)
    gate = keras.layers.Conv2D(6, 1, activation="hard_sigmoid", dtype=dtype)(gate)
    h = keras.layers.Multiply(dtype=dtype)([h, gate])
    h = keras.layers.GlobalAveragePooling2D(dtype=dtype)(h)
    return keras.Model(x, keras.layers.Dense(outputs, dtype=dtype, name="head")(h), name="se")


def separable(input_shape, outputs, dtype="float32"):
    """Depthwise and separable convolutions, Rescaling and ZeroPadding, as mobile backbones have."""
    x = keras.Input(input_shape, dtype=dtype)
    h = keras.layers.Rescaling(2.0, offset=-1.0, dtype=dtype)(x)
    h = keras.layers.ZeroPadding2D(1, dtype=dtype)(h)
    h = keras.layers.DepthwiseConv2D(3, dtype=dtype)(h)
    h = keras.layers.BatchNormalization(dtype=dtype)(h)
    h = keras.layers.ReLU(6.0, dtype=dtype)(h)
    h = keras.layers.SeparableConv2D(5, 3, padding="same", dtype=dtype)(h)
    h = keras.layers.GlobalAveragePooling2D(dtype=dtype)(h)
    return keras.Model(x, keras.layers.Dense(outputs, dtype=dtype, name="head")(h),
                       name="separable")


def stock_resnet12(input_shape, outputs, widths=(4, 8, 8, 16), dtype="float32"):
    """ResNet-12 as a user writes it with stock Keras layers (BatchNormalization)."""
    x = inputs = keras.Input(input_shape, dtype=dtype)
    for b, width in enumerate(widths, 1):
        shortcut = keras.layers.Conv2D(width, 1, use_bias=False, dtype=dtype)(x)
        shortcut = keras.layers.BatchNormalization(dtype=dtype)(shortcut)
        h = x
        for j in (1, 2, 3):
            h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, dtype=dtype)(h)
            h = keras.layers.BatchNormalization(dtype=dtype)(h)
            if j < 3:
                h = keras.layers.LeakyReLU(0.1, dtype=dtype)(h)
        h = keras.layers.LeakyReLU(0.1, dtype=dtype)(keras.layers.Add(dtype=dtype)([h, shortcut]))
        x = keras.layers.MaxPooling2D(2, dtype=dtype)(h)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    return keras.Model(inputs, keras.layers.Dense(outputs, dtype=dtype)(x), name="stock_resnet12")


def mobilenet(input_shape, outputs):
    """keras.applications' MobileNetV3Small without its classifier top (and so without its
    dropout), random weights, average-pooled, and a head."""
    backbone = keras.applications.MobileNetV3Small(input_shape=tuple(input_shape),
                                                   include_top=False, weights=None,
                                                   pooling="avg")
    return keras.Sequential([keras.Input(tuple(input_shape)), backbone,
                             keras.layers.Dense(outputs, name="head")], name="mobilenet")


def mobilenet_top(input_shape, outputs):
    """The same with its classifier top, whose dropout breaks exact adaptation."""
    backbone = keras.applications.MobileNetV3Small(input_shape=tuple(input_shape),
                                                   include_top=True, weights=None, classes=8,
                                                   include_preprocessing=False)
    return keras.Sequential([keras.Input(tuple(input_shape)), backbone,
                             keras.layers.Dense(outputs, name="head")], name="mobilenet_top")
