"""MAML (Finn et al., 2017), second- and first-order: Eq. 1 and Eq. 2 of the landscape paper.

For a meta-batch of n tasks with support sets D_i and query sets D'_i:

    Eq. 1   theta~_i = adapt(theta, D_i)                      (T inner SGD steps)
    Eq. 2   theta   <- theta - beta * Adam( grad_theta (1/n) sum_i L(D'_i; theta~_i) )

The gradient of Eq. 2 flows through the inner loop (Hessian-vector terms included) unless the inner
loop is first-order. Tasks are processed one at a time and their gradients summed (see
`tfmeta.meta_batch`), so memory does not grow with n.

ANIL, Meta-SGD and Wormhole MAML take this meta-step on a model whose inner loop differs
(`models.InnerLoop`, `models.Gains`). MAML++'s multi-step loss (Antoniou et al., 2019) replaces
L(D'; theta~) by sum_t w_t L(D'; theta_t) over the inner steps t = 1..T (`multi_step_weights`).
"""

from typing import Callable, Optional, Sequence

import tensorflow as tf

from tfmeta import meta_batch
from tfmeta.adaptation import adapt
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import query_metrics
from tfmeta.models import MetaModel
from tfmeta.tasks.episode import Episode


def multi_step_weights(epoch: tf.Tensor, steps: int, anneal_epochs: int, dtype) -> tf.Tensor:
    """MAML++'s weights w [T] of the query losses after inner steps 1..T at (0-based) `epoch`.

    They start uniform, 1/T. Each epoch the first T - 1 lose 1/(T E) down to a floor of 0.03/T, and
    the last gains what they lose; from epoch E = `anneal_epochs` on, the last step alone counts.
    """
    epoch = tf.cast(epoch, dtype)
    decay, floor = 1.0 / steps / anneal_epochs, 0.03 / steps
    early = tf.maximum(1.0 / steps - epoch * decay, floor)
    last = tf.minimum(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    annealed = tf.concat([tf.fill([steps - 1], early), tf.reshape(last, [1])], 0)
    return tf.where(epoch < anneal_epochs, annealed, tf.one_hot(steps - 1, steps, dtype=dtype))


def task_objective(model: MetaModel, params: Sequence[tf.Tensor], episode: Episode,
                   config: AdaptConfig, step_weights: Optional[tf.Tensor] = None) -> tuple:
    """L(D'; theta~) for one task, with theta~ = adapt(theta, D); with `step_weights` w [T], the
    multi-step loss sum_t w_t L(D'; theta_t), the query after step t seeing that step's per-step
    batch-norm weights.

    Returns:
        (objective scalar, metrics dict of scalars: query loss and, for classifiers, accuracy at
        theta~, and the support loss before adaptation).
    """
    steps = config.steps

    def query_loss(p, t):  # after step t of 1..T-1; the last one is `metrics` below
        if not 0 < t < steps:
            return tf.zeros([], params[0].dtype)
        return query_metrics(model, p, episode, t - 1)["loss"]

    # Plain MAML observes nothing: the meta-step is the hot path.
    adapted, trajectory = adapt(model, params, episode.support, config,
                                observe=None if step_weights is None else query_loss)
    metrics = query_metrics(model, adapted, episode, steps - 1)
    objective = metrics["loss"]
    if step_weights is not None and steps:
        objective = (tf.reduce_sum(step_weights[:-1] * trajectory.observations[1:-1])
                     + step_weights[-1] * objective)
    if steps > 0:
        metrics["support_loss_before_adaptation"] = trajectory.losses[0]
    return objective, metrics


def task_gradient(model: MetaModel, params: Sequence[tf.Tensor], episode: Episode,
                  config: AdaptConfig) -> tuple:
    """grad_theta L(D'; adapt(theta, D)) for one task, and its metrics."""
    return meta_batch.task_gradient(
        lambda p, e: task_objective(model, p, e, config), params, episode)


def meta_gradient(model: MetaModel, params: Sequence[tf.Tensor], batch: Episode,
                  config: AdaptConfig, global_batch_size, mapping: str = "loop",
                  multi_step_epochs: int = 0, epoch: Optional[Callable] = None) -> tuple:
    """The MAML meta-gradient of a (replica's share of a) meta-batch.

    Args:
        batch: an Episode whose fields have a leading task dimension [n_local, ...].
        global_batch_size: n, the meta-batch size summed over replicas. The per-task gradients are
            summed and divided by it, so that summing over replicas (what Keras optimizers do under
            a `tf.distribute` mapping) yields the mean over the whole meta-batch.
        mapping: how tasks are mapped ("loop", "map" or "vectorized").
        multi_step_epochs: E > 0: MAML++'s multi-step loss, annealed over E epochs.
        epoch: () -> the current 0-based epoch (a tensor), for the multi-step weights.

    Returns:
        (gradients matching params, metrics: per-task metrics summed and divided by n).
    """
    params = list(params)
    weights = (multi_step_weights(epoch(), config.steps, multi_step_epochs, params[0].dtype)
               if multi_step_epochs and config.steps else None)
    grads, metrics = meta_batch.sum_gradients(
        lambda p, episode: task_objective(model, p, episode, config, weights), params, batch,
        mapping)
    return meta_batch.scale_by(grads, metrics, global_batch_size)
