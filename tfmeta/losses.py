"""Task losses and metrics on explicit parameters.

A model's `loss_name` picks the loss: "cross_entropy" for N-way classification (labels int [B]) or
"mse" for regression (targets [B, 1]). Every loss is a mean over the B examples. A task's query set
is scored through `query_metrics`, which normalizes it as the model's `norm` mode says.
"""

from typing import Sequence

import tensorflow as tf

from tfmeta.models import MetaModel, apply, query_outputs
from tfmeta.tasks.episode import Episode


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


def mask_classes(logits: tf.Tensor, classes) -> tf.Tensor:
    """logits [B, N] with every class c >= `classes` set to the dtype's lowest value, so that its
    softmax probability is exactly 0 and it gets no gradient: an M-way softmax on an N-way head."""
    present = tf.range(tf.shape(logits)[-1]) < classes
    return tf.where(present, logits, logits.dtype.min)


def outputs_loss(model: MetaModel, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """The model's loss for already-computed outputs."""
    if model.loss_name == "cross_entropy":
        return cross_entropy(outputs, targets)
    return mse(outputs, targets)


def task_loss(model: MetaModel, params: Sequence[tf.Tensor], x: tf.Tensor,
              y: tf.Tensor, classes=None, step=None) -> tf.Tensor:
    """L(D; params): the model's mean loss on the examples (x [B, ...], y [B] or [B, 1]), with
    inner step `step`'s batch-norm weights (`models.apply`).

    With `classes` M, for a task that uses only the first M of an N-way head's classes: the
    softmax is over those M (`mask_classes`), and the mean is scaled by M / N, so that each
    example weighs in the loss what it weighed in the N-way tasks the model was meta-trained on
    (B = K M examples instead of K N). The meta-learned initialization and inner learning rate
    assume that weight: on 2-, 3- and 5-way tasks of a 20-way Omniglot model it scores 4-5
    points above the unscaled mean (docs/results/serving.md, 'Fewer classes').
    """
    return classes_loss(model, apply(model, params, x, step=step), y, classes)


def classes_loss(model: MetaModel, outputs: tf.Tensor, y: tf.Tensor, classes=None) -> tf.Tensor:
    """`outputs_loss` over the first `classes` M of the head's N classes (`task_loss`)."""
    if classes is None:
        return outputs_loss(model, outputs, y)
    scale = tf.cast(classes, outputs.dtype) / tf.cast(tf.shape(outputs)[-1], outputs.dtype)
    return outputs_loss(model, mask_classes(outputs, classes), y) * scale


def outputs_metrics(model: MetaModel, outputs: tf.Tensor, targets: tf.Tensor) -> dict:
    """{"loss": scalar} plus {"accuracy": scalar} for classifiers, for computed outputs."""
    metrics = {"loss": outputs_loss(model, outputs, targets)}
    if model.loss_name == "cross_entropy":
        metrics["accuracy"] = accuracy(outputs, targets)
    return metrics


def task_metrics(model: MetaModel, params: Sequence[tf.Tensor], x: tf.Tensor,
                 y: tf.Tensor) -> dict:
    """`outputs_metrics` on the examples (x [B, ...], y), normalized as one batch."""
    return outputs_metrics(model, apply(model, params, x), y)


def query_metrics(model: MetaModel, params: Sequence[tf.Tensor], episode: Episode,
                  step=None, classes=None) -> dict:
    """`outputs_metrics` on the episode's query set at `params`, normalized by the model's `norm`
    mode (`models.query_outputs`): by its own statistics or by the support set's; `step` picks
    per-step batch-norm weights (None: the last step's). With `classes` M, over the head's first
    M classes (`mask_classes`): the loss and accuracy of the M-way task."""
    outputs = query_outputs(model, params, episode.support_x, episode.query_x, step)
    if classes is not None:
        outputs = mask_classes(outputs, classes)
    return outputs_metrics(model, outputs, episode.query_y)
