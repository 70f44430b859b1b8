"""Adaptation: the one inner loop of tfmeta.

`adapt` runs T steps of full-batch SGD on a task's support set, on explicit parameter tensors,

    theta_0 = theta,   theta_{t+1} = theta_t - alpha * grad L(D_support; theta_t),

with alpha = `lr` (Wormhole MAML's gains step at `gain_lr_scale` times it), and returns theta_T
(written theta~ in the landscape paper). The model says which parameters step and whether alpha is
meta-learned (`models.InnerLoop`): ANIL steps the head only, Meta-SGD one learned rate per
parameter element, MAML++'s LSLR one per tensor and step; the others stay at theta. Called under
an outer `tf.GradientTape`, the result differentiates to second order through every inner step, so
d theta_T / d theta includes the Hessian terms (MAML). With `first_order=True` the inner gradients
are treated as constants (first-order MAML), so d theta_T / d theta = I.

Every meta-step, evaluation, landscape metric and export adapts through this function; nothing else
runs an inner loop. Cost: T forward and backward passes on the support set. An outer tape that
records them for the second-order meta-gradient keeps every step's activations until its backward
pass, so memory grows with T; with `recompute` it keeps only theta_0 ... theta_T and recomputes each
step's activations when its backward pass needs them, for one more forward and backward pass per
step.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import tensorflow as tf

from tfmeta import tree
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import classes_loss, mask_classes, task_loss
from tfmeta.models import (MetaModel, features, head, outputs_given, params_of, parts,
                           support_statistics)

__all__ = ["AdaptConfig", "Origin", "Trajectory", "adapt", "adapt_task", "AdaptedTask",
           "displacement", "inner_gradient", "sgd_step", "support_loss_fn", "learning_rates"]


class Origin:
    """Where meta-test adaptation starts: `params()` once per batch of tasks (theta, the model's
    meta-learned weights), then `task(params, support)` for each task (theta itself). The finetune
    baseline overrides both (`algorithms.finetune.Origin`)."""

    def __init__(self, model: MetaModel):
        self.model = model

    def params(self) -> list:
        return params_of(self.model)

    def task(self, params: list, support: tuple) -> list:
        return params


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


def learning_rates(model: MetaModel, params: Sequence[tf.Tensor], config: AdaptConfig,
                   step: int) -> list:
    """The rate of each adapted parameter (`model.inner_indices`) at inner step `step`: alpha
    (Wormhole's gains: alpha * gain_lr_scale), or the model's learned rates, read from `params` so
    that the meta-gradient reaches them: tensors shaped like their parameters (Meta-SGD), or
    scalars (LSLR; a step beyond the learned ones uses the last)."""
    if model.rates is not None:
        learned = parts(model, params).rates
        if model.inner.learned_lr == "layer_step":
            return [rates[tf.minimum(step, model.inner.steps - 1)] for rates in learned]
        return learned
    gains = model.num_gated if model.gains is not None else None
    return [config.lr * config.gain_lr_scale if i == gains else config.lr
            for i in model.inner_indices]


def support_loss_fn(model: MetaModel, params: Sequence[tf.Tensor], support: tuple,
                    classes=None) -> Callable:
    """loss(theta, step) on the support set. When only the head adapts (ANIL), the representation
    does not change during adaptation: it is computed once, at `params`, and each step runs the
    head alone."""
    x, y = support
    if model.inner.head_only and not model.inner.step_norms:
        h = features(model, params, x)
        return lambda theta, step: classes_loss(model, head(model, theta, h), y, classes)
    return lambda theta, step: task_loss(model, theta, x, y, classes, step)


def inner_part(model: MetaModel, params: Sequence[tf.Tensor]) -> list:
    """The entries of `params` that the inner loop adapts."""
    return [params[i] for i in model.inner_indices]


def with_inner(model: MetaModel, params: Sequence[tf.Tensor], part: Sequence[tf.Tensor]) -> list:
    """`params` with its adapted entries replaced by `part`."""
    params = list(params)
    for i, p in zip(model.inner_indices, part):
        params[i] = p
    return params


def inner_gradient(model: MetaModel, params: Sequence[tf.Tensor], moving: Sequence[tf.Tensor],
                   support_loss: Callable, step) -> tuple:
    """(d loss / d moving, loss): the support loss's gradient at theta_t = `params` with its
    adapted entries at `moving`, with respect to those entries."""
    moving = list(moving)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(moving)
        loss = support_loss(with_inner(model, params, moving), step)
    return tape.gradient(loss, moving), loss


def sgd_step(model: MetaModel, params: Sequence[tf.Tensor], moving: Sequence[tf.Tensor],
             support_loss: Callable, config: AdaptConfig, step) -> tuple:
    """One inner step at step t = `step`, from theta_t = `params` with its adapted entries at
    `moving` (the entries the inner loop leaves alone stay at params).

    Returns:
        (theta_{t+1}'s adapted entries, the support loss at theta_t).
    """
    grads, loss = inner_gradient(model, params, moving, support_loss, step)
    if config.first_order:
        grads = tree.stop_gradient(grads)
    rates = learning_rates(model, params, config, step)
    return [w - rate * g for w, rate, g in zip(moving, rates, grads)], loss


def recomputed(f: Callable, count: int) -> Callable:
    """f(*tensors) -> tuple of tensors, differentiable in its first `count` arguments (the rest are
    data), with no activations kept for the backward pass: the gradient runs f again under its
    own tape and differentiates that.

    Unlike `tf.recompute_grad`, f runs with gradient recording on, so it may differentiate
    internally (an inner step's gradient) and the backward pass reaches second order through it.
    A compiled graph keeps nothing of the first run for the backward pass, since the outer tape
    reaches only the arguments; an eager outer tape still holds it. f must take everything it
    reads as an argument: a custom gradient passes none to captured tensors, and a while loop's
    gradient cannot reach tensors that only the gradient function captures.
    """
    @tf.custom_gradient
    def wrapped(*args):
        def grad(*upstream):
            # A data dependency on the incoming gradient makes the second run a different
            # computation, so that Grappler cannot merge it with the first (control dependencies
            # are not enough under XLA). It adds zero, or NaN where the gradient already is NaN.
            first = tf.reshape(upstream[0], [-1])[:1]
            zero = tf.reduce_sum(tf.where(tf.math.is_nan(first), first, tf.zeros_like(first)))
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                again = [a + tf.cast(zero, a.dtype) for a in args[:count]]
                tape.watch(again)
                outputs = f(*again, *args[count:])
            grads = tape.gradient(outputs, again, output_gradients=list(upstream),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads + [None] * (len(args) - count)
        return f(*args), grad
    return wrapped


def _recomputed_step(model: MetaModel, params: Sequence[tf.Tensor], support: tuple,
                     config: AdaptConfig, classes) -> Callable:
    """`sgd_step` as step(moving, t), `recomputed`. Everything it reads is an argument of the
    recomputed function: params (ANIL's features, per-step batch-norm weights and learned rates
    come from them), the support set, the step and a traced `classes`."""
    params = list(params)
    count = len(params) + len(model.inner_indices)

    def fn(*tensors):
        start, moving = list(tensors[:len(params)]), tensors[len(params):count]
        x, y, t, *traced = tensors[count:]
        loss_fn = support_loss_fn(model, start, (x, y), traced[0] if traced else classes)
        new, loss = sgd_step(model, start, moving, loss_fn, config, t)
        return (*new, loss)

    fn = recomputed(fn, count)
    traced = [classes] if tf.is_tensor(classes) else []

    def step(moving, t):
        *new, loss = fn(*params, *moving, *support, t, *traced)
        return new, loss

    return step


def _while_steps(step: Callable, moving: list, steps: int) -> tuple:
    """step(moving, t) for t = 0 .. T-1 as one `tf.while_loop`: with recomputed steps, neither the
    graph nor the memory its gradient keeps (theta_0 ... theta_T) grows with more than T's
    parameter vectors. Returns the last adapted entries and the [T] support losses."""
    def body(t, moving, losses):
        new, loss = step(moving, t)
        return t + 1, new, losses.write(t, loss)

    _, moving, losses = tf.while_loop(
        lambda t, *_: t < steps, body,
        (tf.constant(0), moving, tf.TensorArray(moving[0].dtype, steps)),
        maximum_iterations=steps)
    return moving, losses.stack()


def adapt(model: MetaModel, params: Sequence[tf.Tensor], support: tuple, config: AdaptConfig,
          steps: Optional[int] = None,
          observe: Optional[Callable[[list], Any]] = None, classes: Optional[int] = None) -> tuple:
    """Adapts `params` to one task's support set by T steps of SGD.

    Args:
        model: the architecture; its variables are not read or written.
        params: theta, tensors matching `model.trainable_variables`.
        support: (x [K, ...], y [K] or [K, 1]), the task's support set.
        config: inner learning rate, steps and first-order flag.
        steps: overrides `config.steps` (evaluation uses more steps than training).
        observe: optional function observe(theta_t, t), evaluated for t = 0 ... T and returned
            stacked in the trajectory (evaluation uses it for query accuracy after each step).
        classes: M, for a task whose labels use only the first M classes of an N-way head: the
            support loss is a softmax over those M, each example weighted as in N-way tasks
            (`losses.task_loss`). None: all N.

    Returns:
        (adapted, trajectory): theta_T as a parameter list, and a `Trajectory`.
    """
    steps = config.steps if steps is None else steps
    if config.recompute:
        step = _recomputed_step(model, params, support, config, classes)
    else:
        support_loss = support_loss_fn(model, params, support, classes)

        def step(moving, t):
            return sgd_step(model, params, moving, support_loss, config, t)
    moving = inner_part(model, params)
    if config.recompute and observe is None and steps:
        moving, losses = _while_steps(step, moving, steps)
        return with_inner(model, params, moving), Trajectory(list(params), losses, None)
    losses, observations = [], []
    for t in range(steps):
        if observe is not None:
            observations.append(observe(with_inner(model, params, moving), t))
        moving, loss = step(moving, t)
        losses.append(loss)
    theta = with_inner(model, params, moving)
    if observe is not None:
        observations.append(observe(theta, steps))
        observations = tf.nest.map_structure(lambda *leaves: tf.stack(leaves), *observations)
    else:
        observations = None
    dtype = theta[0].dtype
    loss_vector = tf.stack(losses) if losses else tf.zeros([0], dtype)
    return theta, Trajectory(list(params), loss_vector, observations)


class AdaptedTask:
    """A task adapted once (`adapt_task`): `predict(query_x)` answers its queries with one
    forward pass each, as `models.query_outputs` would among the support set.

    Attributes:
        model: the architecture.
        params: the adapted parameters, matching `model.trainable_variables`.
        statistics: what the support set left for the queries' normalization
            (`models.support_statistics`; [] where they need none).
        classes: M, the task's class count (logits of classes >= M are masked); None for
            regression or all classes.
        step: the inner step whose per-step batch-norm weights the queries see.
    """

    def __init__(self, model: MetaModel, params: list, statistics: list,
                 classes: Optional[tf.Tensor], step: int):
        self.model, self.params, self.statistics = model, params, statistics
        self.classes, self.step = classes, step

    @functools.cached_property
    def _forward(self):
        # Compiled on the first `predict`: a task built inside an export's graph never needs it.
        return tf.function(self.outputs, reduce_retracing=True)

    def outputs(self, x: tf.Tensor) -> tf.Tensor:
        """Outputs [Q, outputs] for x [Q, *example_shape], uncompiled (for a caller's graph)."""
        outputs = outputs_given(self.model, self.params, self.statistics, x, self.step)
        return outputs if self.classes is None else mask_classes(outputs, self.classes)

    def predict(self, x) -> tf.Tensor:
        """Outputs [Q, outputs] for queries x [Q, *example_shape]: logits or predictions."""
        return self._forward(tf.convert_to_tensor(x, self.params[0].dtype))

    __call__ = predict


def adapt_task(model: MetaModel, params: Sequence[tf.Tensor], support: tuple,
               config: AdaptConfig, steps: Optional[int] = None) -> AdaptedTask:
    """Adapts `params` to a support set (x [K, ...], y [K] or [K, 1]) once, by `steps` (default
    `config.eval_steps`, as at meta-test and in an export) inner steps, for any number of later
    queries: a classifier's labels 0..M-1 adapt and answer over those M classes, as an export
    does."""
    steps = config.eval_steps if steps is None else steps
    x, y = (tf.convert_to_tensor(v) for v in support)
    x = tf.cast(x, params[0].dtype)
    classes = None
    if model.loss_name == "cross_entropy":
        y = tf.cast(y, tf.int32)
        classes = tf.reduce_max(y) + 1
    else:
        y = tf.cast(y, params[0].dtype)
    adapted, _ = adapt(model, list(params), (x, y), config, steps=steps, classes=classes)
    statistics = support_statistics(model, adapted, x, steps - 1)
    return AdaptedTask(model, adapted, statistics, classes, steps - 1)
