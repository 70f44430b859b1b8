"""Meta-training augmentation of an episode's images, drawn from the episode's stateless seed.

An augmentation is a function (images [N, M, H, W, ch] in [0, 1], seed [2]) -> images of the same
shape: the N classes of an episode, M = K + Q images each. It is a pure function of the seed, so a
resumed run continues the same stream. Meta-test episodes are never augmented.
"""

import math
from typing import Callable

import tensorflow as tf

from tfmeta.config.data import AffineConfig

Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
def affine(config: AffineConfig) -> Augment | None:
    """The augmentation `config` describes, or None when `per` is "none"."""
    if config.per == "none":
        return None

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        classes, per_class = tf.shape(images)[0], tf.shape(images)[1]
        height, width, channels = images.shape[2:]
        draws = classes if config.per == "class" else classes * per_class
        transforms = _random_maps(draws, height, width, config, seed)          # [draws, 8]
        if config.per == "class":
            transforms = tf.repeat(transforms, per_class, axis=0)
        flat = tf.reshape(images, [-1, height, width, channels])
        moved = tf.raw_ops.ImageProjectiveTransformV3(
            images=flat, transforms=transforms, output_shape=[height, width],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
        return tf.reshape(moved, tf.shape(images))

    return augment


def _random_maps(count, height: int, width: int, config: AffineConfig,
                 seed: tf.Tensor) -> tf.Tensor:
    """[count, 8] projective transforms (output pixel -> input pixel) about the image centre."""
    def uniform(index: int, bound: float) -> tf.Tensor:
        draw_seed = tf.random.experimental.stateless_fold_in(seed, index)
        return tf.random.stateless_uniform([count], draw_seed, -bound, bound)

    scale_x, scale_y = 1.0 + uniform(0, config.scale), 1.0 + uniform(1, config.scale)
    shear = uniform(2, config.shear)
    shift_x, shift_y = uniform(3, config.shift * width), uniform(4, config.shift * height)
    angle = uniform(5, config.rotation * math.pi / 180)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    zero = tf.zeros([count])
    # [x_in - cx, y_in - cy] = R(angle) [[sx, k], [0, sy]] [x - cx, y - cy] + [tx, ty]; at
    # angle 0 exactly the map without rotation, from the same draws.
    a0, a1 = cos * scale_x, cos * shear - sin * scale_y
    b0, b1 = sin * scale_x, sin * shear + cos * scale_y
    return tf.stack([a0, a1, cx - a0 * cx - a1 * cy + shift_x,
                     b0, b1, cy - b0 * cx - b1 * cy + shift_y, zero, zero], axis=1)


def flip_and_shift(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """MiniImagenet's: each image flipped left-right with probability 1/2 and shifted by up to 1/8
    of its size (a random crop of the zero-padded image)."""
    shape = tf.shape(images)
    height, width, channels = images.shape[2:]
    flat = tf.reshape(images, [-1, height, width, channels])
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    count = tf.shape(flat)[0]
    flip = tf.random.stateless_uniform([count], flip_seed) < 0.5
    flat = tf.where(flip[:, None, None, None], tf.reverse(flat, axis=[2]), flat)
    pad_h, pad_w = height // 8, width // 8
    padded = tf.pad(flat, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    top = tf.random.stateless_uniform([count], crop_seed, maxval=2 * pad_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([count], crop_seed[::-1], maxval=2 * pad_w + 1,
                                       dtype=tf.int32)
    rows = top[:, None] + tf.range(height)[None, :]                      # [B, H]
    cols = left[:, None] + tf.range(width)[None, :]                      # [B, W]
    flat = tf.gather(padded, rows, batch_dims=1)                        # [B, H, W + 2pw, ch]
    return tf.reshape(tf.gather(flat, cols, axis=2, batch_dims=1), shape)
