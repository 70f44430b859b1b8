"""Task losses and metrics on explicit parameters.

A model's `loss_name` picks the loss: "cross_entropy" for N-way classification (labels int [B]) or
"mse" for regression (targets [B, 1]). Every loss is a mean over the B examples.
"""

from typing import Sequence

import tensorflow as tf

from tfmeta.models import MetaModel, apply


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy of logits [B, N] against int labels [B]."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def mse(predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Mean squared error of predictions [B, D] against targets [B, D]."""
    return tf.reduce_mean(tf.square(predictions - targets))


def accuracy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Fraction of argmax(logits [B, N]) equal to labels [B]."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
    return tf.reduce_mean(tf.cast(hits, logits.dtype))


def outputs_loss(model: MetaModel, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """The model's loss for already-computed outputs."""
    if model.loss_name == "cross_entropy":
        return cross_entropy(outputs, targets)
    return mse(outputs, targets)


def task_loss(model: MetaModel, params: Sequence[tf.Tensor], x: tf.Tensor,
              y: tf.Tensor) -> tf.Tensor:
    """L(D; params): the model's mean loss on the examples (x [B, ...], y [B] or [B, 1])."""
    return outputs_loss(model, apply(model, params, x), y)


def task_metrics(model: MetaModel, params: Sequence[tf.Tensor], x: tf.Tensor,
                 y: tf.Tensor) -> dict:
    """{"loss": scalar} plus {"accuracy": scalar} for classifiers, from one forward pass."""
    outputs = apply(model, params, x)
    metrics = {"loss": outputs_loss(model, outputs, y)}
    if model.loss_name == "cross_entropy":
        metrics["accuracy"] = accuracy(outputs, y)
    return metrics
