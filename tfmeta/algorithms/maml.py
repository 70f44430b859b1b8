"""MAML (Finn et al., 2017), second- and first-order: Eq. 1 and Eq. 2 of the landscape paper.

For a meta-batch of n tasks with support sets D_i and query sets D'_i:

    Eq. 1   theta~_i = adapt(theta, D_i)                      (T inner SGD steps)
    Eq. 2   theta   <- theta - beta * Adam( grad_theta (1/n) sum_i L(D'_i; theta~_i) )

The gradient of Eq. 2 flows through the inner loop (Hessian-vector terms included) unless the inner
loop is first-order. Tasks are processed one at a time and their gradients summed (see
`tfmeta.meta_batch`), so memory does not grow with n.
"""

from typing import Sequence

import tensorflow as tf

from tfmeta import meta_batch
from tfmeta.adaptation import AdaptConfig, adapt
from tfmeta.losses import query_metrics
from tfmeta.models import MetaModel
from tfmeta.tasks.episode import Episode


def task_objective(model: MetaModel, params: Sequence[tf.Tensor], episode: Episode,
                   config: AdaptConfig) -> tuple:
    """L(D'; theta~) for one task, with theta~ = adapt(theta, D).

    Returns:
        (query loss scalar, metrics dict of scalars: query loss, query accuracy for classifiers,
        and the support loss before adaptation).
    """
    adapted, trajectory = adapt(model, params, episode.support, config)
    metrics = query_metrics(model, adapted, episode)
    if config.steps > 0:
        metrics["support_loss_before_adaptation"] = trajectory.losses[0]
    return metrics["loss"], metrics


def task_gradient(model: MetaModel, params: Sequence[tf.Tensor], episode: Episode,
                  config: AdaptConfig) -> tuple:
    """grad_theta L(D'; adapt(theta, D)) for one task, and its metrics."""
    return meta_batch.task_gradient(
        lambda p, e: task_objective(model, p, e, config), params, episode)


def meta_gradient(model: MetaModel, params: Sequence[tf.Tensor], batch: Episode,
                  config: AdaptConfig, global_batch_size, strategy: str = "loop") -> tuple:
    """The MAML meta-gradient of a (replica's share of a) meta-batch.

    Args:
        batch: an Episode whose fields have a leading task dimension [n_local, ...].
        global_batch_size: n, the meta-batch size summed over replicas. The per-task gradients are
            summed and divided by it, so that summing over replicas (what Keras optimizers do under
            a `tf.distribute` strategy) yields the mean over the whole meta-batch.
        strategy: how tasks are mapped ("loop", "map" or "vectorized").

    Returns:
        (gradients matching params, metrics: per-task metrics summed and divided by n).
    """
    params = list(params)
    grads, metrics = meta_batch.sum_gradients(
        lambda p, episode: task_objective(model, p, episode, config), params, batch, strategy)
    return meta_batch.scale_by(grads, metrics, global_batch_size)
