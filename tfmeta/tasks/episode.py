"""The unit of meta-learning data: one task's support and query sets."""

from typing import NamedTuple

import tensorflow as tf


class Episode(NamedTuple):
    """One task, or a meta-batch of tasks when every field has a leading [n] dimension.

    Attributes:
        support_x: [K_total, *example_shape] support inputs (N*K images, or K sine points [K, 1]).
        support_y: [K_total] int class labels in [0, N), or [K_total, 1] regression targets.
        query_x: [Q_total, *example_shape] query inputs.
        query_y: [Q_total] or [Q_total, 1] query targets.
    """
    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor

    @property
    def support(self) -> tuple:
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple:
        return self.query_x, self.query_y
