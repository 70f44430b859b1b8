"""Adaptation: the one inner loop of tfmeta.

`adapt` runs T steps of full-batch SGD on a task's support set, on explicit parameter tensors,

    theta_0 = theta,   theta_{t+1} = theta_t - alpha * grad L(D_support; theta_t),

with alpha = `lr` (Wormhole MAML's gains step at `gain_lr_scale` times it),
and returns theta_T (written theta~ in the landscape paper). Called under an outer
`tf.GradientTape`, the result differentiates to second order through every inner step, so
d theta_T / d theta includes the Hessian terms (MAML). With `first_order=True` the inner gradients
are treated as constants (first-order MAML), so d theta_T / d theta = I.

Every meta-step, evaluation, landscape metric and export adapts through this function; nothing else
runs an inner loop. Cost: T forward and backward passes on the support set, doubled in memory when
an outer tape records them for the second-order meta-gradient.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import tensorflow as tf

from tfmeta import tree
from tfmeta.losses import task_loss
from tfmeta.models import MetaModel


@dataclasses.dataclass
class AdaptConfig:
    """The inner loop.

    Attributes:
        steps: T, the SGD steps taken on the support set during meta-training.
        lr: alpha, the inner learning rate.
        first_order: drop the second-order terms (first-order MAML).
        test_steps: T used when evaluating on meta-test tasks; 0 means "same as steps".
        gain_lr_scale: the inner learning rate of Wormhole MAML's gains (`models.Gains`), as a
            multiple of lr. A gain's gradient <W_k, dL/d(s_k W_k)> sums over its whole tensor, so
            at the weights' own rate one step can rescale a layer many times over.
    """
    steps: int = 1
    lr: float = 0.01
    first_order: bool = False
    test_steps: int = 0
    gain_lr_scale: float = 0.1

    @property
    def eval_steps(self) -> int:
        return self.test_steps or self.steps


class Trajectory(NamedTuple):
    """What `adapt` saw on its way from theta_0 to theta_T.

    Attributes:
        initial: theta_0, the parameters adaptation started from.
        losses: [T] support loss at theta_0 ... theta_{T-1} (the loss each step descended).
        observations: `observe(theta_t)` for t = 0..T, each leaf stacked to [T + 1, ...]; None when
            no `observe` was given.
    """
    initial: list
    losses: tf.Tensor
    observations: Any


def displacement(adapted: Sequence[tf.Tensor], trajectory: Trajectory) -> list:
    """theta~ - theta: the adaptation displacement, matching the parameter list."""
    return tree.sub(adapted, trajectory.initial)


def learning_rates(model: MetaModel, config: AdaptConfig) -> list:
    """The inner learning rate of each entry of `model.trainable_variables`."""
    rates = [config.lr] * len(model.trainable_variables)
    if model.gains is not None:
        gain_lr = config.lr * config.gain_lr_scale
        rates[model.num_gated:] = [gain_lr] * (len(rates) - model.num_gated)
    return rates


def adapt(model: MetaModel, params: Sequence[tf.Tensor], support: tuple, config: AdaptConfig,
          steps: Optional[int] = None,
          observe: Optional[Callable[[list], Any]] = None, classes=None) -> tuple:
    """Adapts `params` to one task's support set by T steps of SGD.

    Args:
        model: the architecture; its variables are not read or written.
        params: theta, tensors matching `model.trainable_variables`.
        support: (x [K, ...], y [K] or [K, 1]), the task's support set.
        config: inner learning rate, steps and first-order flag.
        steps: overrides `config.steps` (evaluation uses more steps than training).
        observe: optional function of the parameters, evaluated at theta_0 ... theta_T and returned
            stacked in the trajectory (evaluation uses it for query accuracy after each step).
        classes: M, for a task whose labels use only the first M classes of an N-way head: the
            support loss is a softmax over those M, each example weighted as in N-way tasks
            (`losses.task_loss`). None: all N.

    Returns:
        (adapted, trajectory): theta_T as a parameter list, and a `Trajectory`.
    """
    steps = config.steps if steps is None else steps
    x, y = support
    theta = list(params)
    rates = learning_rates(model, config)
    losses, observations = [], []
    for _ in range(steps):
        if observe is not None:
            observations.append(observe(theta))
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(theta)
            loss = task_loss(model, theta, x, y, classes)
        grads = tape.gradient(loss, theta)
        if config.first_order:
            grads = tree.stop_gradient(grads)
        theta = [p - rate * g for p, rate, g in zip(theta, rates, grads)]
        losses.append(loss)
    if observe is not None:
        observations.append(observe(theta))
        observations = tf.nest.map_structure(lambda *leaves: tf.stack(leaves), *observations)
    else:
        observations = None
    dtype = theta[0].dtype
    loss_vector = tf.stack(losses) if losses else tf.zeros([0], dtype)
    return theta, Trajectory(list(params), loss_vector, observations)
