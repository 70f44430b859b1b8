"""Batch normalization on batch statistics, and layer normalization, exact to every order of
derivative.

Where a batch norm takes its statistics from (`reference_rows`) and which inner step's weights it
uses (`step`) are arguments of its call, and also a context (`statistics`) that `MetaModel.call`
sets around its feature network: a Keras graph (a residual block, a nested backbone) passes no
extra arguments to its layers, and every `BatchNorm` inside it, at any depth, reads them from the
context instead.
"""

import contextlib
import threading

import keras
import tensorflow as tf
from keras import ops

_CONTEXT = threading.local()


@contextlib.contextmanager
def statistics(reference_rows=None, step=None):
    """Within the block, every `BatchNorm` called without its own `reference_rows` and `step`
    takes these (a context per thread: a server traces several requests at once)."""
    saved = getattr(_CONTEXT, "value", (None, None))
    _CONTEXT.value = (reference_rows, step)
    try:
        yield
    finally:
        _CONTEXT.value = saved


@contextlib.contextmanager
def _scoped(name: str, value):
    """The thread's context attribute `name` is `value` within the block (yielded), as before
    after it."""
    saved = getattr(_CONTEXT, name, None)
    setattr(_CONTEXT, name, value)
    try:
        yield value
    finally:
        setattr(_CONTEXT, name, saved)


def capture():
    """Within the block, every `BatchNorm` and `LayerNorm` call also appends its normalized input
    before gamma and beta, x^ (the shape of its input), to the list the block gets: what a
    representation is before the affine transform that sets its mean and scale."""
    return _scoped("captured", [])


def recorded():
    """Within the block, every `BatchNorm` that normalizes with reference rows also appends the
    statistics it used, (mean, variance) each [1, ..., C], to the list the block gets, in call
    order: what a support set leaves for its queries (`replayed`)."""
    return _scoped("recorded", [])


def replayed(statistics_list):
    """Within the block, every `BatchNorm` normalizes with the next (mean, variance) of
    `statistics_list`, as `recorded` gave them, instead of statistics of its input: a query
    alone, normalized exactly as among its support set's rows."""
    return _scoped("replayed", iter(statistics_list))


def _captured(normalized: tf.Tensor) -> None:
    captured = getattr(_CONTEXT, "captured", None)
    if captured is not None:
        captured.append(normalized)


def normalize(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float) -> tf.Tensor:
    """gamma * x^ + beta with x^ = (x - mu) * r, r = 1 / sqrt(var + epsilon), the statistics of all
    of x [B, ..., C] per channel; gamma, beta [C].

    Its gradient is the closed form dx = gamma r (dy - mean(dy) - x^ mean(dy x^)), a third of the
    full-size ops autodiff emits for the same pass. That gradient is built from recorded ops on
    x^ and r, which are themselves recorded functions of x, so an outer tape differentiates it
    exactly: second-order meta-gradients and Hessian-vector products stay exact (the
    finite-difference tests), and so does every higher order.
    """
    axes = list(range(len(x.shape) - 1))

    @tf.custom_gradient
    def fn(x, gamma, beta):
        centered = x - tf.reduce_mean(x, axes, keepdims=True)
        r = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axes, keepdims=True) + epsilon)
        normalized = centered * r

        def grad(dy):
            dbeta = tf.reduce_sum(dy, axes)
            dgamma = tf.reduce_sum(dy * normalized, axes)
            count = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
            return (gamma * r) * (dy - (dbeta + normalized * dgamma) / count), dgamma, dbeta

        return normalized * gamma + beta, grad

    return fn(x, gamma, beta)


class BatchNorm(keras.layers.Layer):
    """Normalizes each channel with the statistics of the batch it is called on.

    For an input `x` of shape [B, ..., C], with mean and variance taken over every axis but the last:

        mu = mean(x),  var = mean((x - mu)^2)
        y  = gamma * (x - mu) / sqrt(var + epsilon) + beta

    There are no moving statistics. As in Finn et al. (2017), MAML normalizes with the statistics of
    the current batch at meta-train *and* meta-test time. Called with `reference_rows=k`, the
    statistics come from the first k rows only and normalize every row:

        mu = mean(x[:k]),  var = mean((x[:k] - mu)^2)

    This is how a query set is normalized with its support set's statistics (MetaBN, Bronskill et
    al. 2020): the model runs on [support; query] with k = K, so the support rows see exactly their
    own statistics and each query row is normalized independently of the other queries (see
    `models.query_outputs`). `training` is accepted and ignored.

    Why not `keras.layers.BatchNormalization`: it computes the variance around `stop_gradient(mu)`.
    That leaves first derivatives exact (d var / d mu = 0 at the batch mean) but makes every second
    derivative through the variance wrong, which corrupts second-order MAML meta-gradients and
    Hessian-vector products by 8-20% (tests/test_maml.py shows it failing a finite-difference check).

    With `steps` S > 0 (MAML++'s per-step weights and biases, BNWB), gamma and beta are [S, C]:
    the forward pass of inner step t uses row t, clipped to [0, S - 1], and `step=None` the last
    row. A query after t steps is seen with row t - 1, the row of the step that produced it.

    Args:
        epsilon: added to the variance for numerical stability.
        steps: S, rows of per-step gamma and beta; 0: one gamma and beta for every step.
    """

    def __init__(self, epsilon: float = 1e-5, steps: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.steps = steps

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"BatchNorm needs a known channel dimension. Received input_shape={input_shape}")
        shape = (self.steps, channels) if self.steps else (channels,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")

    def call(self, x, training=None, reference_rows=None, step=None, mask=None):
        """x [B, ..., C] -> [B, ..., C]; `reference_rows` k: statistics of x[:k] (default: the
        context's, `statistics`, else all); `step` t (an int or int tensor): the inner step whose
        gamma and beta to use (per-step layers only; default the context's). `mask` is accepted
        as the stock layer's call accepts it (a converted graph passes it on) and must be None."""
        if mask is not None:
            raise ValueError("BatchNorm normalizes every position; it takes no mask")
        context_rows, context_step = getattr(_CONTEXT, "value", (None, None))
        reference_rows = context_rows if reference_rows is None else reference_rows
        step = context_step if step is None else step
        gamma, beta = self.gamma, self.beta
        if self.steps:
            row = self.steps - 1 if step is None else ops.clip(
                ops.convert_to_tensor(step, "int32"), 0, self.steps - 1)
            gamma, beta = gamma[row], beta[row]  # a slice: a gather's gradient is sparse
        # tf's conversion, not keras.ops': with the latter, test_maml's finite-difference check
        # of the meta-gradient through batch norm fails (18% off).
        gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
        axes = list(range(len(x.shape) - 1))
        reference = x if reference_rows is None else x[:reference_rows]
        if getattr(_CONTEXT, "captured", None) is not None:
            mean = ops.mean(reference, axis=axes, keepdims=True)
            variance = ops.mean(ops.square(reference - mean), axis=axes, keepdims=True)
            _captured((x - mean) * ops.rsqrt(variance + self.epsilon))
        replay = getattr(_CONTEXT, "replayed", None)
        if replay is not None:
            mean, variance = next(replay)
        elif reference_rows is None:
            return normalize(x, gamma, beta, self.epsilon)
        else:
            mean = ops.mean(reference, axis=axes, keepdims=True)
            variance = ops.mean(ops.square(reference - mean), axis=axes, keepdims=True)
            record = getattr(_CONTEXT, "recorded", None)
            if record is not None:
                record.append((mean, variance))
        # The per-channel factor is formed first so that only two ops touch the full activation.
        return (x - mean) * (gamma * ops.rsqrt(variance + self.epsilon)) + beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "steps": self.steps}


class LayerNorm(keras.layers.Layer):
    """Normalizes each example over its last axis, exact to every order of derivative:

        mu = mean(x, -1),  var = mean((x - mu)^2, -1),  y = gamma (x - mu) / sqrt(var + eps) + beta

    with gamma, beta [C]. `keras.layers.LayerNormalization` takes its variance around
    stop_gradient(mu) (`tf.nn.moments`), which leaves its second derivatives wrong, as for batch
    norm; `custom.exact_batch_norm` converts it to this layer.

    Args:
        epsilon: added to the variance for numerical stability.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x, training=None, mask=None):
        # `mask`: as for BatchNorm; a layer norm is per position, so a mask changes nothing.
        gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)  # as BatchNorm
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        normalized = centered * ops.rsqrt(variance + self.epsilon)
        _captured(normalized)
        return normalized * gamma + beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
