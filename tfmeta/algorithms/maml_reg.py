"""MAML with the trajectory-angle regularizer of Guiroy, Verma & Pal (2019), Algorithm 1.

For the n tasks of a meta-batch, adapt as in MAML (Eq. 1) to theta~_i, and form the unit adaptation
directions and their mean,

    u_i = (theta~_i - theta) / ||theta~_i - theta||,      u_mu = (1/n) sum_i u_i.

Each solution is corrected along the gradient of its disagreement with the mean,

    Omega_i = -u_i^T u_mu,      theta^_i = theta~_i - gamma * grad_{theta~_i} Omega_i,

and the meta-step is MAML's at the corrected solutions, differentiated to second order through the
adaptation and the correction: grad_theta (1/n) sum_i L(D'_i; theta^_i).

The paper does not say whether u_mu is held constant when Omega is differentiated. The gradient of
Omega_i with respect to theta~_i is the same either way (u_i^T u_i = 1 has zero gradient), but the
meta-gradient differs by the path through u_mu. `constant_mean=True` (the default) holds u_mu
constant: it is computed in a first pass without gradients, tasks stay independent, and memory does
not grow with n. `constant_mean=False` differentiates through u_mu, which puts the whole meta-batch
on one tape (memory grows with n). Either way the first pass costs one extra adaptation per task.
Under a `tf.distribute` mapping u_mu is the mean over every replica's tasks (`distribute.all_sum`);
with `constant_mean=False` the gradient flows back through the all-sum, whose gradient is again an
all-sum, so the meta-gradient is exactly the one-process one.
"""

from typing import Sequence

import tensorflow as tf

from tfmeta import distribute, meta_batch, tree
from tfmeta.adaptation import adapt, displacement
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import query_metrics
from tfmeta.models import MetaModel
from tfmeta.tasks.episode import Episode


def unit_direction(model: MetaModel, params: list, episode: Episode, config: AdaptConfig) -> tuple:
    """(theta~, u): the adapted parameters and the unit adaptation direction."""
    adapted, trajectory = adapt(model, params, episode.support, config)
    step = displacement(adapted, trajectory)
    norm = tree.norm(step)
    return adapted, [s / norm for s in step]


def corrected(params: list, adapted: list, mean: Sequence[tf.Tensor], gamma: float) -> list:
    """theta^ = theta~ - gamma * grad_{theta~} Omega, Omega = -u^T u_mu, u the unit direction."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(adapted)
        step = tree.sub(adapted, params)
        omega = -tree.dot(step, mean) / tree.norm(step)
    return tree.axpy(-gamma, tape.gradient(omega, adapted), adapted)


def meta_gradient(model: MetaModel, params: Sequence[tf.Tensor], batch: Episode,
                  config: AdaptConfig, global_batch_size, mapping: str = "loop",
                  gamma: float = 0.5, constant_mean: bool = True) -> tuple:
    """The regularized meta-gradient of a (replica's share of a) meta-batch; u_mu is the mean over
    the whole meta-batch of `global_batch_size` tasks.

    Returns:
        (gradients matching params, metrics summed over tasks and divided by the global n).
    """
    params = list(params)
    n = tf.cast(global_batch_size, params[0].dtype)

    def corrected_metrics(p, episode, adapted, mean):
        metrics = query_metrics(model, corrected(p, adapted, mean, gamma), episode)
        return metrics["loss"], metrics

    if constant_mean:
        mean = meta_batch.sum_tasks(
            lambda e: unit_direction(model, tree.stop_gradient(params), e, config)[1],
            batch, mapping)
        mean = tree.stop_gradient([m / n for m in distribute.all_sum(mean)])
        grads, metrics = meta_batch.sum_gradients(
            lambda p, e: corrected_metrics(p, e, adapt(model, p, e.support, config)[0], mean),
            params, batch, mapping)
    else:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            adapted, directions = meta_batch.map_tasks(
                lambda e: unit_direction(model, params, e, config), batch, mapping)
            mean = [m / n for m in distribute.all_sum([tf.reduce_sum(d, axis=0)
                                                       for d in directions])]
            losses, metrics = meta_batch.map_tasks(
                lambda pair: corrected_metrics(params, pair[0], pair[1], mean), (batch, adapted),
                mapping)
            total = tf.reduce_sum(losses)
        grads = tape.gradient(total, params)
        metrics = tf.nest.map_structure(lambda t: tf.reduce_sum(t, axis=0), metrics)
    return meta_batch.scale_by(grads, metrics, global_batch_size)
