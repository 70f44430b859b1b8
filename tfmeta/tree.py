"""Arithmetic on parameter lists.

Parameters travel as flat Python lists of tensors in the order of `model.trainable_variables`. These
helpers are the vector algebra the algorithms need; each is O(number of parameters).
"""

from typing import Sequence

import tensorflow as tf


def sub(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> list:
    """Returns a - b, tensor by tensor."""
    return [x - y for x, y in zip(a, b)]


def axpy(alpha, x: Sequence[tf.Tensor], y: Sequence[tf.Tensor]) -> list:
    """Returns alpha * x + y, tensor by tensor."""
    return [alpha * u + v for u, v in zip(x, y)]


def stop_gradient(a: Sequence[tf.Tensor]) -> list:
    """Returns `a` as constants for every enclosing gradient tape."""
    return [tf.stop_gradient(x) for x in a]


def dot(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> tf.Tensor:
    """<a, b> summed over all tensors of the lists, a scalar."""
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(a, b)])


def sum_sq(a: Sequence[tf.Tensor]) -> tf.Tensor:
    """||a||^2 over all tensors of the list, a scalar."""
    return tf.add_n([tf.reduce_sum(tf.square(x)) for x in a])


def norm(a: Sequence[tf.Tensor]) -> tf.Tensor:
    """The global Euclidean norm ||a||, a scalar."""
    return tf.sqrt(sum_sq(a))
