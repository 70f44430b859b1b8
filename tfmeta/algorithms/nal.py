"""NAL, non-adaptive learning: the multi-task empirical-risk minimizer.

Trained on the same tasks as MAML but without inner-loop adaptation: each task contributes its loss
at theta itself on all of its examples, support and query together,

    theta <- theta - beta * Adam( grad_theta (1/n) sum_i L(D_i u D'_i; theta) ).

At meta-test time it is evaluated like every other algorithm, adapting with `adapt`. Collins,
Mokhtari & Shakkottai compare it with MAML on the task landscape.
"""

from typing import Sequence

import tensorflow as tf

from tfmeta import meta_batch
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import outputs_loss, query_metrics
from tfmeta.models import MetaModel, joint_outputs
from tfmeta.tasks.episode import Episode


def task_objective(model: MetaModel, params: Sequence[tf.Tensor], episode: Episode) -> tuple:
    """L(D u D'; theta) for one task (D u D' one batch, see `models.joint_outputs`), and the
    query metrics at theta."""
    y = tf.concat([episode.support_y, episode.query_y], 0)
    outputs = joint_outputs(model, params, episode.support_x, episode.query_x)
    return outputs_loss(model, outputs, y), query_metrics(model, params, episode)


def meta_gradient(model: MetaModel, params: Sequence[tf.Tensor], batch: Episode,
                  config: AdaptConfig, global_batch_size, mapping: str = "loop") -> tuple:
    """The NAL gradient of a (replica's share of a) meta-batch; `config` is unused in training.

    Returns:
        (gradients matching params, metrics summed over tasks and divided by the global n).
    """
    del config  # no inner loop: adaptation happens only at meta-test time
    params = list(params)
    grads, metrics = meta_batch.sum_gradients(
        lambda p, episode: task_objective(model, p, episode), params, batch, mapping)
    return meta_batch.scale_by(grads, metrics, global_batch_size)
