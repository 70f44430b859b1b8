"""The finetune baseline (landscape paper, Section 3.2 and A.3).

Training is plain supervised learning on the meta-train split: every meta-train class is a class of
one wide head (C_train outputs; one output for regression), and each step is a minibatch gradient of
the cross-entropy (or MSE) at theta, with no inner loop. At meta-test time the head is replaced by a
fresh N-way layer with Xavier (Glorot uniform) initialization and zero bias, drawn anew for each
meta-test task (`head: per_task`, the paper's "replaced ... for the given meta-test task"), and all
parameters are adapted by the same `adapt` as every other algorithm. The paper uses 64 x 25
(batch x iterations per epoch) for 1-shot and 128 x 12 for 5-shot.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfmeta import adaptation
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.algorithms import FinetuneConfig
from tfmeta.losses import task_metrics
from tfmeta.models import MetaModel, params_of, parts


def meta_gradient(model: MetaModel, params: Sequence[tf.Tensor], batch: tuple,
                  config: AdaptConfig, global_batch_size, mapping: str = "loop") -> tuple:
    """The supervised gradient of a (replica's share of a) minibatch (x [B, ...], y [B] or [B, 1]).

    The mean loss is rescaled by B / global_batch_size, so that summing over replicas gives the mean
    over the global batch. `config` and `mapping` are unused: there is no inner loop.

    Returns:
        (gradients matching params, {"loss", "accuracy" for classifiers} as batch means).
    """
    del config, mapping
    params = list(params)
    x, y = batch
    share = tf.cast(tf.shape(x)[0], params[0].dtype) / tf.cast(global_batch_size, params[0].dtype)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(params)
        metrics = task_metrics(model, params, x, y)
        loss = metrics["loss"] * share
    return tape.gradient(loss, params), {k: v * share for k, v in metrics.items()}


def xavier_head(shapes: Sequence[tuple], dtype, key) -> list:
    """[kernel, bias] of a fresh dense head: Glorot-uniform kernel [D, N] drawn from the
    stateless seed `key` [2], zero bias [N]."""
    kernel_shape, bias_shape = shapes
    limit = float(np.sqrt(6.0 / (kernel_shape[0] + kernel_shape[1])))
    kernel = tf.random.stateless_uniform(kernel_shape, key, -limit, limit, dtype=dtype)
    return [kernel, tf.zeros(bias_shape, dtype)]


def fingerprint(support: tuple) -> tf.Tensor:
    """An int64 that identifies a support set (x [K, ...], y [K]): the wrapping sum of the bit
    patterns of its float32 inputs and of its labels, each weighted by its position. Integer sums
    are exact in any order, so every device and strategy gets the same number."""
    x, y = support
    bits = tf.cast(tf.reshape(tf.bitcast(tf.cast(x, tf.float32), tf.int32), [-1]), tf.int64)
    labels = tf.cast(tf.reshape(y, [-1]), tf.int64)
    weigh = lambda v: tf.reduce_sum(v * (tf.range(tf.size(v, tf.int64), dtype=tf.int64) % 65521 + 1))  # noqa: E731
    return weigh(bits) + 1_000_003 * weigh(labels)


def task_head(model: MetaModel, params: Sequence[tf.Tensor], support: tuple,
              seed: int) -> list:
    """`params` with the head replaced by this task's own fresh Xavier head, seeded by
    (seed, fingerprint(support))."""
    named = parts(model, params)
    features, head = named.features, [tuple(p.shape) for p in named.head]
    key = tf.stack([tf.constant(seed, tf.int64), fingerprint(support)])
    return features + xavier_head(head, features[0].dtype, key)


def transfer(trained: MetaModel, target: MetaModel, seed: int) -> list:
    """Parameters for `target` (N-way head): `trained`'s feature weights and a fresh Xavier head."""
    features = parts(trained, params_of(trained)).features
    head = [tuple(v.shape) for v in parts(target, target.trainable_variables).head]
    return features + xavier_head(head, features[0].dtype, [seed, 0])


class Origin(adaptation.Origin):
    """Where the baseline adapts from at meta-test: its trained features with a fresh Xavier head
    of N ways (`transfer`), shared by every task or drawn per task (`FinetuneConfig.head`)."""

    def __init__(self, trained: MetaModel, eval_model: MetaModel, options: FinetuneConfig):
        super().__init__(eval_model)
        self.trained, self.options = trained, options

    def params(self) -> list:
        return transfer(self.trained, self.model, self.options.head_seed)

    def task(self, params: list, support: tuple) -> list:
        if self.options.head == "shared":
            return params
        return task_head(self.model, params, support, self.options.head_seed)


def networks(config, source, build) -> tuple:
    """(model, eval_model, Origin): trained with one head over every meta-train class, adapted
    with a fresh N-way head."""
    model = build(config, source, source.classes["train"])
    eval_model = build(config, source)
    return model, eval_model, Origin(model, eval_model, config.algorithms.finetune)


def hparams(config) -> dict:
    options = config.algorithms.finetune
    return {"finetune.batch_size": options.batch_size, "finetune.head": options.head,
            "finetune.head_seed": options.head_seed}
