"""Arithmetic on parameter lists.

Parameters travel as flat Python lists of tensors in the order of `model.trainable_variables`. These
helpers are the only vector algebra the algorithms and metrics need; each is O(number of parameters).
"""

from typing import Sequence

import tensorflow as tf

Params = list  # list[tf.Tensor], one per trainable variable, in `model.trainable_variables` order.


def add(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> Params:
    """Returns a + b, elementwise per tensor."""
    return [x + y for x, y in zip(a, b)]


def sub(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> Params:
    """Returns a - b, elementwise per tensor."""
    return [x - y for x, y in zip(a, b)]


def scale(alpha, a: Sequence[tf.Tensor]) -> Params:
    """Returns alpha * a."""
    return [alpha * x for x in a]


def axpy(alpha, x: Sequence[tf.Tensor], y: Sequence[tf.Tensor]) -> Params:
    """Returns alpha * x + y."""
    return [alpha * u + v for u, v in zip(x, y)]


def dot(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> tf.Tensor:
    """Returns the scalar sum over tensors of <a_i, b_i>."""
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(a, b)])


def norm(a: Sequence[tf.Tensor]) -> tf.Tensor:
    """Returns the global Euclidean norm, a scalar."""
    return tf.sqrt(dot(a, a))


def zeros_like(a: Sequence[tf.Tensor]) -> Params:
    return [tf.zeros_like(x) for x in a]


def flatten(a: Sequence[tf.Tensor]) -> tf.Tensor:
    """Concatenates all tensors into one vector of shape [P]."""
    return tf.concat([tf.reshape(x, [-1]) for x in a], axis=0)


def unflatten(vector: tf.Tensor, like: Sequence[tf.Tensor]) -> Params:
    """Splits a [P] vector into tensors shaped like `like`."""
    sizes = [int(tf.size(x)) if tf.is_tensor(x) else x.size for x in like]
    parts = tf.split(vector, sizes)
    return [tf.reshape(p, x.shape) for p, x in zip(parts, like)]


def stop_gradient(a: Sequence[tf.Tensor]) -> Params:
    return [tf.stop_gradient(x) for x in a]
