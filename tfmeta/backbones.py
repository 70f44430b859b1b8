"""keras.applications backbones as `model.factory` functions: a backbone without its classifier
top (and so without its dropout), average-pooled, and a linear head named "head".

    model:
      arch: custom
      factory: tfmeta.backbones:mobilenet_v3_small
      weights: /data/mobilenet_v3_small_5way.weights.h5   # optional: pretrained, saved locally
      adapt_layers: head,expanded_conv_10_*             # the head and the last block adapt

The backbone starts from random weights (`weights=None`): nothing is downloaded. For ImageNet
weights, build the same model once where they can be downloaded, with the backbone's
`weights="imagenet"`, save it with `model.save_weights(PATH)`, and give PATH as `model.weights`.
"""

import keras


def mobilenet_v3_small(input_shape, outputs: int) -> keras.Model:
    """MobileNetV3Small (Howard et al., 2019): depthwise-separable inverted residual blocks
    expanded_conv, expanded_conv_1 ... expanded_conv_10, squeeze-and-excite, hard_swish; 0.9 M
    parameters in the backbone. Its 34 BatchNormalization layers are made exact by tfmeta."""
    backbone = keras.applications.MobileNetV3Small(input_shape=tuple(input_shape),
                                                   include_top=False, weights=None,
                                                   pooling="avg")
    return keras.Sequential([keras.Input(tuple(input_shape)), backbone,
                             keras.layers.Dense(outputs, name="head")],
                            name="mobilenet_v3_small")
