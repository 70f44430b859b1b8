"""Gradient agreement (Eshratifar, Eigen & Pedram, 2018): MAML with tasks weighted by agreement.

With g_i = theta - theta~_i, each task's adaptation step, task i's weight is its agreement with the
meta-batch,

    w_i = sum_j g_i^T g_j / sum_k |sum_j g_k^T g_j|,

and the meta-gradient is sum_i w_i grad_theta L(D'_i; theta~_i) (second-order unless the inner loop
is first-order). The weights are constants of the step, as in the paper. sum_j g_i^T g_j = g_i^T G
with G = sum_j g_j, so the weights cost O(n) inner products, not O(n^2). Under a `tf.distribute`
mapping G and the normalizer are summed over every replica's tasks (`distribute.all_sum`), so
the weights are those of the whole meta-batch.

Memory: the n per-task gradients are kept until the weights are known (n x P floats).
"""

from typing import Sequence

import tensorflow as tf

from tfmeta import distribute, meta_batch
from tfmeta.adaptation import adapt
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import query_metrics
from tfmeta.models import MetaModel
from tfmeta.tasks.episode import Episode


def agreement_weights(steps: Sequence[tf.Tensor]) -> tf.Tensor:
    """w [n] from the stacked adaptation steps g (each tensor [n, ...]); see the module docstring.
    Under a strategy, n is this replica's share and the sums run over the whole meta-batch."""
    total = distribute.all_sum([tf.reduce_sum(g, axis=0, keepdims=True) for g in steps])
    n = tf.shape(steps[0])[0]
    agreement = tf.add_n([tf.reduce_sum(tf.reshape(g * t, [n, -1]), axis=1)
                          for g, t in zip(steps, total)])
    return tf.math.divide_no_nan(agreement, distribute.all_sum(tf.reduce_sum(tf.abs(agreement))))


def meta_gradient(model: MetaModel, params: Sequence[tf.Tensor], batch: Episode,
                  config: AdaptConfig, global_batch_size, mapping: str = "loop") -> tuple:
    """The gradient-agreement meta-gradient of a (replica's share of a) meta-batch.

    Returns:
        (gradients matching params, metrics: per-task means, and `task_weights` [n] of this
        replica's tasks).
    """
    params = list(params)

    def one(episode):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            adapted, _ = adapt(model, params, episode.support, config)
            metrics = query_metrics(model, adapted, episode)
        grads = tape.gradient(metrics["loss"], params)
        return grads, [tf.stop_gradient(p - a) for p, a in zip(params, adapted)], metrics

    grads, steps, metrics = meta_batch.map_tasks(one, batch, mapping)
    weights = agreement_weights(steps)
    grads = [tf.tensordot(tf.cast(weights, g.dtype), g, axes=1) for g in grads]
    metrics = {k: tf.reduce_sum(v) / tf.cast(global_batch_size, v.dtype)
               for k, v in metrics.items()}
    return grads, {**metrics, "task_weights": weights}
